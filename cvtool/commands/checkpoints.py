"""Turn `resume=`/`ckpt=` into overrides: a checkpoint carries the overrides that composed its config."""

from __future__ import annotations

import logging
from pathlib import Path

from cvtool.config import runner
from cvtool.errors import CvtoolError

from .run_identity import is_rank0, other_task_run, run_dir_for

log = logging.getLogger("cvtool.train")

# stored overrides that describe the model and its data (kept when a checkpoint is evaluated or predicted with);
# an experiment may choose the model and dataset itself (experiment=lenet5_digits)
MODEL_KEYS = ("task", "model", "dataset", "experiment")


def value_of(overrides: list[str], key: str) -> str | None:
    for item in reversed(overrides):
        if item.startswith(f"{key}="):
            value = item.split("=", 1)[1].strip("'\"")
            return None if value in ("null", "None", "") else value
    return None


def without(overrides: list[str], *keys: str) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in keys and not o.startswith("hydra.")]


def quoted(key: str, value: str | Path) -> str:
    return f"{key}='{value}'"


def loadable_checkpoint(directory: Path) -> Path | None:
    """checkpoints/last.pt of a run dir, or the previous one when last.pt is corrupt (said in one line); None
    when the run has no checkpoint yet."""
    from cvtool.engine.checkpoint import PREVIOUS, load_checkpoint

    last, previous = directory / "checkpoints" / "last.pt", directory / "checkpoints" / PREVIOUS
    if not last.is_file():
        return previous if previous.is_file() else None
    try:
        load_checkpoint(last, lazy=True)
        return last
    except CvtoolError as err:
        if not previous.is_file():
            raise
        try:
            step = load_checkpoint(previous, lazy=True)["step"]
        except CvtoolError:
            raise err from None
        if is_rank0():
            log.warning("%s is unreadable (%s); resuming from %s (step %d)", last, err.what, previous.name, step)
        return previous


def run_overrides(overrides: list[str]) -> list[str]:
    """name=/resume= -> the overrides of this run: resume=PATH|DIR continues that run; resume=auto continues the
    run directory of this run (name=NAME, or the launcher's job) when it holds a checkpoint, else starts it."""
    value, name = value_of(overrides, "resume"), value_of(overrides, "name")
    if value is None and name is None:
        return overrides
    user = without(overrides, "resume")
    if value not in (None, "auto"):
        return _continue(resolve_checkpoint(value), user)
    cfg = runner.compose("train", user)
    runs = Path(cfg.paths.runs)
    if name is not None and (other := other_task_run(runs, cfg.task.name, name)):
        raise CvtoolError(f"name={name} is a {other} run (runs/{other}/train/{name})", where="name",
                          fix=f"use task={other} to continue it, or another name")
    run_dir = run_dir_for(runs / cfg.task.name / "train", name, auto=value == "auto")
    if run_dir is None:  # resume=auto outside a launcher, without a name: a new run
        log.info("resume=auto: no name= and no launcher job id, so this is a new run")
        return user
    found = loadable_checkpoint(run_dir)
    if found is not None and value is None:
        raise CvtoolError(f"run {run_dir} already holds a checkpoint", where="name",
                          fix="continue it with resume=auto, or choose another name=")
    if found is None:
        return [*user, quoted("hydra.run.dir", run_dir)]
    return _continue(found, user, model=cfg.model.name if has_key(user, "model") else None)


def resolve_checkpoint(value: str) -> Path:
    from cvtool.engine.checkpoint import resolve_checkpoint_path

    return resolve_checkpoint_path(value)


def has_key(overrides: list[str], key: str) -> bool:
    return any(o.split("=", 1)[0].lstrip("+~") == key for o in overrides)


def _continue(path: Path, user: list[str], model: str | None = None) -> list[str]:
    """Continue the run of checkpoint `path`: its own overrides, then the user's, in its run dir."""
    from cvtool.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path, lazy=True)
    if model is not None and state.get("model_name") not in (None, model):
        raise CvtoolError(f"{path} is a {state['model_name']} run, not model={model}", where="name",
                          fix=f"drop model={model} to continue it, or choose another name=")
    stored = without(state.get("overrides", []), "resume", "command", "trainer.stop_after", "name")
    run_dir = path.resolve().parent.parent
    return [*stored, *user, quoted("resume", path), quoted("hydra.run.dir", run_dir)]


def checkpoint_overrides(overrides: list[str]) -> list[str]:
    """ckpt=PATH (or model_file=PATH, an exported model) -> the task/model/dataset overrides it was trained with
    first, so the user need not repeat them.

    A group the user chooses anew (e.g. dataset=digits) drops the stored overrides of that group.
    """
    value, exported = value_of(overrides, "ckpt"), value_of(overrides, "model_file")
    if value is not None:
        from cvtool.engine.checkpoint import load_checkpoint

        state = load_checkpoint(value, lazy=True)
    elif exported is not None:  # an exported model's sidecar JSON carries the same overrides
        from cvtool.exporting.runtime import read_sidecar

        state = read_sidecar(exported)
    else:
        return overrides
    chosen = {o.split("=", 1)[0] for o in overrides if o.split("=", 1)[0] in MODEL_KEYS}
    stored = [o for o in state.get("overrides", [])
              if (group := o.split("=", 1)[0].split(".")[0].lstrip("+")) in MODEL_KEYS and group not in chosen]
    return [*stored, *overrides]


def check_compatible(state: dict, task: str, class_names: list[str] | None) -> None:
    """A checkpoint must match the task and the dataset's classes it is used with."""
    where = state.get("path")
    if state["task"] != task:
        raise CvtoolError(f"checkpoint is a {state['task']} model but task={task}", where=where,
                          fix=f"use task={state['task']} or a {task} checkpoint")
    if class_names is not None and list(state["class_names"]) != list(class_names):
        theirs = state["class_names"]
        raise CvtoolError(f"checkpoint has {len(theirs)} classes {list(theirs)[:8]} but the dataset has "
                          f"{len(class_names)} {list(class_names)[:8]}", where=where,
                          fix="use the dataset the model was trained on (same classes) or train a new model")
