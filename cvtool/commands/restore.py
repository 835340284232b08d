"""Rebuild a trained model and its task adapter from a checkpoint (eval, predict)."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from cvtool.engine.checkpoint import load_checkpoint, model_weights
from cvtool.engine.hardware import Hardware
from cvtool.errors import CvtoolError
from cvtool.tasks import build_task

from . import components as C
from . import folder_defaults


def restore(cfg: DictConfig, hardware: Hardware):
    """(model in eval mode on the device, task adapter, class names, checkpoint state) for `cfg.ckpt`."""
    if not cfg.ckpt:
        raise CvtoolError(f"`cvtool {cfg.command}` needs a trained model", where="ckpt",
                          fix="pass ckpt=runs/<task>/train/<timestamp>/checkpoints/best.pt")
    state = load_checkpoint(cfg.ckpt)
    trained = OmegaConf.create(state["config"])
    if trained.task.name != cfg.task.name:
        raise CvtoolError(f"checkpoint is a {trained.task.name} model but task={cfg.task.name}",
                          where=state["path"], fix=f"drop task= or use task={trained.task.name}")
    folder_defaults.adopt_trained(cfg, trained)  # the model's own image size, channels, mean/std
    task = C.task_from(cfg)
    if trained.dataset.channels != cfg.dataset.channels:
        raise CvtoolError(f"checkpoint takes {trained.dataset.channels}-channel images but dataset "
                          f"{cfg.dataset.name} has {cfg.dataset.channels}", where=state["path"],
                          fix="evaluate on data like the training data (same channels and classes)")
    # the model is built from the config it was trained with, whatever the current defaults are
    trained_task = build_task(trained.task.name, C.plain(trained.task), C.plain(trained.dataset),
                              C.plain(trained.model))
    model = trained_task.build_model(C.plain(trained.model) | {"weights": None}, len(state["class_names"]))
    try:
        model.load_state_dict(model_weights(state))
    except RuntimeError as exc:
        raise CvtoolError("checkpoint weights do not fit the model it names", where=state["path"],
                          fix=f"the file may come from another cvtool version ({exc.args[0].splitlines()[0][:120]})"
                          ) from exc
    model = C.to_device(model, hardware).eval()
    return model, task, list(state["class_names"]), state


def restore_or_load(cfg: DictConfig, hardware: Hardware):
    """`restore` for ckpt=, or an exported model (model_file=) behind the same interface (eval, predict)."""
    if not cfg.get("model_file"):
        return restore(cfg, hardware)
    if cfg.ckpt:
        raise CvtoolError("both ckpt= and model_file= given", where="ckpt/model_file",
                          fix="run either the checkpoint or the exported model")
    from cvtool.exporting.runtime import load_exported

    model, sidecar = load_exported(cfg.model_file, hardware.device)
    if sidecar["task"] != cfg.task.name:
        raise CvtoolError(f"model_file is a {sidecar['task']} model but task={cfg.task.name}",
                          where=str(cfg.model_file), fix=f"drop task= or use task={sidecar['task']}")
    state = {"task": sidecar["task"], "class_names": sidecar["class_names"], "path": str(cfg.model_file)}
    if sidecar.get("config"):
        folder_defaults.adopt_trained(cfg, OmegaConf.create(sidecar["config"]))
    return model, C.task_from(cfg), list(sidecar["class_names"]), state
