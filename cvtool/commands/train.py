"""`cvtool train`: fit a model with the one Trainer; `train(cfg, run_dir)` is the pure entry point."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cvtool import __version__
from cvtool.config import runner
from cvtool.engine.checkpoint import load_checkpoint
from cvtool.engine.guard import LearningGuardHook
from cvtool.engine.hooks import CheckpointHook, EarlyStopHook, EMAHook, EvalHook, LoggerHook, LRSchedulerHook
from cvtool.engine.metrics_log import read_records
from cvtool.engine.schedule import build_scheduler
from cvtool.engine.trainer import Trainer
from cvtool.errors import CvtoolError
from cvtool.utils import distributed as dist
from cvtool.utils.atomic import atomic_write_text

from . import components as C
from .checkpoints import check_compatible, loadable_checkpoint, run_overrides
from .loggers import metrics_logger

log = logging.getLogger("cvtool.train")


def main(overrides: list[str], multirun: bool = False) -> list[dict]:
    if multirun and any(o.startswith("resume=") and o != "resume=auto" for o in overrides):
        raise CvtoolError("a sweep (-m) takes resume=auto only (each job continues its own directory)",
                          where="resume", fix="use resume=auto, or resume each job separately")
    return runner.run("train", overrides if multirun else run_overrides(overrides), train, multirun=multirun)


def build_trainer(cfg: DictConfig, run_dir: Path | None):
    """Everything `train` needs, assembled from the config: (trainer, eval hook, class names)."""
    hardware = C.setup(cfg)
    logger = metrics_logger(cfg, run_dir)  # first: an unknown or missing logger fails before data loads
    task = C.task_from(cfg)
    train_set, val_set = C.train_val_sets(cfg, task)
    log.info("train: %s | val: %s", train_set.source, val_set.source)
    model = C.to_device(task.build_model(C.plain(cfg.model), len(train_set.classes)), hardware)
    train_loader = C.loader(train_set, cfg, hardware, train=True)
    optimizer = C.optimizer(cfg, model)
    scheduler = build_scheduler(optimizer, C.plain(cfg.sched), math.ceil(len(train_loader) / cfg.trainer.grad_accum),
                                cfg.trainer.epochs)
    meta = {"config": OmegaConf.to_yaml(cfg, resolve=True), "overrides": runner.current_overrides(),
            "task": task.name, "model_name": cfg.model.name, "class_names": list(train_set.classes),
            "cvtool_version": __version__}
    t = cfg.trainer
    trainer = Trainer(model, task, optimizer, scheduler, train_loader, hardware=hardware, epochs=t.epochs,
                      grad_accum=t.grad_accum, clip_grad_norm=t.clip_grad_norm, stop_after=t.stop_after,
                      logger=logger, checkpoint_meta=meta,
                      preempt_signals=tuple(t.preempt_signals), requeue=t.requeue,
                      allow_world_size_change=t.allow_world_size_change)
    evaluation = EvalHook(C.loader(val_set, cfg, hardware, train=False), task.build_evaluator(val_set),
                          metric=task.metric, every=t.val_every)
    trainer.register_hooks(lr=LRSchedulerHook())
    if t.ema.enabled:
        trainer.register_hooks(ema=EMAHook(model, t.ema.decay))
    if hasattr(task, "extra_hooks"):  # (R-CNN: SVMs fitted after the last epoch, before its validation)
        trainer.register_hooks(**task.extra_hooks(model, train_loader, hardware))
    trainer.register_hooks(eval=evaluation)
    if t.early_stop_patience:
        trainer.register_hooks(early_stop=EarlyStopHook(evaluation, t.early_stop_patience))
    trainer.register_hooks(logger=LoggerHook(t.log_every))
    if t.guard.enabled:  # before checkpointing, which saves its state
        trainer.register_hooks(guard=LearningGuardHook(
            evaluation, margin=t.guard.baseline_margin, fraction=t.guard.baseline_fraction,
            loss_rise=t.guard.loss_rise, warmup_steps=scheduler.lr_lambdas[0].warmup_steps))
    trainer.register_hooks(checkpoint=CheckpointHook(run_dir / "checkpoints" if run_dir else None,
                                                     every=t.checkpoint_every, interval_s=t.checkpoint_interval_s))
    if cfg.resume:
        state = load_checkpoint(cfg.resume, map_location=hardware.device)
        check_compatible(state, task.name, train_set.classes)
        trainer.load_state_dict(state)
        trainer.logger.resume_at(trainer.step, state.get("tracking"))
        log.info("resumed from %s at epoch %d, step %d", cfg.resume, trainer.epoch, trainer.step)
    return trainer, evaluation, train_set.classes


def resume_in_place(cfg: DictConfig) -> None:
    """resume=auto in a job of a sweep: the checkpoint of the job's own directory, if it has one, else a new run."""
    if cfg.resume != "auto":
        return
    from hydra.core.hydra_config import HydraConfig

    found = loadable_checkpoint(Path(HydraConfig.get().runtime.output_dir)) if HydraConfig.initialized() else None
    cfg.resume = str(found) if found else None


def train(cfg: DictConfig, run_dir: Path | None) -> dict:
    """Train as configured; rank 0 writes the run dir. Returns the final metrics."""
    resume_in_place(cfg)
    run_dir = C.run_dir_path(run_dir)
    trainer, evaluation, classes = build_trainer(cfg, run_dir)
    if trainer.epoch >= trainer.epochs:
        raise CvtoolError(f"this run already finished its {trainer.epochs} epochs", where=str(cfg.resume),
                          fix=f"to train longer, resume with trainer.epochs=N (N > {trainer.epochs})")
    started = time.perf_counter()
    with trainer.logger:  # leaving it ends the tracked run: finished, or killed/failed for a resume to reopen
        trainer.fit()
    result = {"task": cfg.task.name, "model": cfg.model.name, "metric": evaluation.metric,
              "best": evaluation.best, "best_epoch": evaluation.best_epoch, "epochs": trainer.epoch,
              "steps": trainer.step, "train_time_s": time.perf_counter() - started,
              "final": evaluation.last, "class_names": list(classes), "world_size": dist.world_size(),
              "warnings": (trainer.hooks["guard"].warnings if "guard" in trainer.hooks else [])
              + list(getattr(trainer.task, "warnings", []))}  # (embedding: collapse)
    if run_dir is not None:
        atomic_write_text(run_dir / "metrics.json", json.dumps(result, indent=2))
        if cfg.plots:
            from cvtool.viz.curves import plot_training_curves

            plot_training_curves(read_records(run_dir / "metrics.jsonl"), run_dir / "plots" / "training_curves.png",
                                 metric=f"val/{evaluation.metric}")
        log.info("best %s=%.4f (epoch %s); run dir: %s", evaluation.metric,
                 float("nan") if evaluation.best is None else evaluation.best,
                 evaluation.best_epoch, run_dir)
    dist.shutdown()
    return {**result, "run_dir": None if run_dir is None else str(run_dir)}  # for the API; not in the file
