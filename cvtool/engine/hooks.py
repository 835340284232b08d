"""Small trainer hooks. Each keeps its own state in state_dict() so a resumed run restores it."""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cvtool.metrics.base import scalar_metrics
from cvtool.utils import distributed as dist
from cvtool.utils.atomic import atomic_copy
from cvtool.utils.seeding import rng_state

from .checkpoint import PREVIOUS, save_checkpoint
from .inference import run_inference
from .progress import TrainProgress

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger("cvtool.train")


class Hook:
    def before_train(self, trainer: Trainer) -> None: ...
    def before_epoch(self, trainer: Trainer) -> None: ...
    def after_step(self, trainer: Trainer, outputs: dict) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def after_train(self, trainer: Trainer) -> None: ...
    def on_interrupt(self, trainer: Trainer) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...


class LRSchedulerHook(Hook):
    """Step the (per-optimizer-step) LR schedule; its state is saved with the scheduler itself."""

    def after_step(self, trainer: Trainer, outputs: dict) -> None:
        trainer.scheduler.step()


def warmed_up_ema(decay: float):
    """EMA update with the decay warmed up as min(decay, (1 + n) / (10 + n)) after n updates (TensorFlow's and
    timm's schedule): early averages forget the random initialisation quickly, so short runs profit too."""
    def average(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        return averaged.lerp(current, 1.0 - min(decay, (1.0 + n) / (10.0 + n))) if averaged.is_floating_point() \
            else current
    return average


class EMAHook(Hook):
    """Exponential moving average of the weights and buffers (torch.optim.swa_utils.AveragedModel with a warmed-up
    decay); validation and best.pt use it."""

    def __init__(self, module: torch.nn.Module, decay: float):
        from torch.optim.swa_utils import AveragedModel

        self.ema = AveragedModel(module, avg_fn=warmed_up_ema(decay), use_buffers=True)

    def before_train(self, trainer: Trainer) -> None:
        trainer.eval_model = self.ema.module

    def after_step(self, trainer: Trainer, outputs: dict) -> None:
        self.ema.update_parameters(trainer.module)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state)


class LoggerHook(Hook):
    """Progress bar, periodic metrics.jsonl/TensorBoard records and a one-line epoch summary."""

    def __init__(self, log_every: int):
        self.log_every = log_every
        self.progress: TrainProgress | None = None

    def before_train(self, trainer: Trainer) -> None:
        self.progress = TrainProgress(total=trainer.epochs * trainer.steps_per_epoch,
                                      completed=trainer.step, enabled=dist.is_main())
        self.progress.start()
        self._reset_window(trainer)

    def _reset_window(self, trainer: Trainer) -> None:
        self.t0, self.images, self.loss_sum, self.loss_n = time.perf_counter(), 0, 0.0, 0

    def before_epoch(self, trainer: Trainer) -> None:
        self.epoch_t0, self.epoch_images, self.epoch_loss, self.epoch_n = time.perf_counter(), 0, 0.0, 0
        self.progress.set_epoch(trainer.epoch + 1, trainer.epochs)

    def after_step(self, trainer: Trainer, outputs: dict) -> None:
        self.images += trainer.last_batch_size
        self.progress.advance()
        if trainer.step % self.log_every and trainer.batch_in_epoch != trainer.steps_per_epoch_batches:
            return
        losses = {k: float(dist.all_reduce_sum(v.detach().float().clone()) / dist.world_size())
                  for k, v in outputs.items() if torch.is_tensor(v) and v.ndim == 0}
        elapsed = time.perf_counter() - self.t0
        throughput = self.images * dist.world_size() / max(elapsed, 1e-9)
        lr = trainer.lr
        epoch = trainer.epoch + trainer.batch_in_epoch / trainer.steps_per_epoch_batches
        record = {"step": trainer.step, "epoch": epoch, **{f"train/{k}": v for k, v in losses.items()}, "lr": lr,
                  "images_per_s": throughput}
        trainer.logger.log(record, trainer.step)
        self.progress.show(loss=losses.get("loss", math.nan), lr=lr, throughput=throughput)
        self.epoch_loss += losses.get("loss", 0.0)
        self.epoch_n += 1
        self._reset_window(trainer)

    def after_epoch(self, trainer: Trainer) -> None:
        elapsed = time.perf_counter() - self.epoch_t0
        loss = self.epoch_loss / max(1, self.epoch_n)
        metrics = trainer.val_metrics_this_epoch
        shown = "".join(f" {k}={v:.4f}" for k, v in (metrics or {}).items() if isinstance(v, float))
        self.progress.print(f"epoch {trainer.epoch}/{trainer.epochs} loss={loss:.4f}{shown} ({elapsed:.1f}s)")

    def after_train(self, trainer: Trainer) -> None:
        self.progress.stop()

    on_interrupt = after_train


class EvalHook(Hook):
    """Validate every `every` epochs (and after the last) with the task's evaluator; track the best metric."""

    def __init__(self, loader, evaluator, metric: str, every: int):
        self.loader, self.evaluator, self.metric, self.every = loader, evaluator, metric, every
        self.best, self.best_epoch, self.since_best, self.last = None, None, 0, None

    def after_epoch(self, trainer: Trainer) -> None:
        trainer.improved = False
        if trainer.epoch % self.every and trainer.epoch != trainer.epochs and not trainer.stopping_early:
            return
        metrics = run_inference(trainer.eval_model, trainer.task, self.loader, self.evaluator, trainer.hardware,
                                description=f"val epoch {trainer.epoch}")
        scalars = scalar_metrics(metrics)  # nested metrics (VOC, COCO) under dotted keys: voc10.mAP, bbox.AP
        trainer.logger.log({"epoch": trainer.epoch, "step": trainer.step,
                            **{f"val/{k}": v for k, v in scalars.items()}}, trainer.step)
        self.last = metrics
        trainer.val_metrics_this_epoch = {self.metric: scalars.get(self.metric)}
        trainer.improved = self.record(scalars.get(self.metric), trainer.epoch)

    def record(self, value: float | None, epoch: int) -> bool:
        """Track the best value (higher is better); True when `value` improved on it."""
        if value is not None and (self.best is None or value > self.best):
            self.best, self.best_epoch, self.since_best = value, epoch, 0
            return True
        self.since_best += 1
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch, "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch, self.since_best = state["best"], state["best_epoch"], state["since_best"]


class EarlyStopHook(Hook):
    """Stop when the monitored validation metric has not improved for `patience` validations."""

    def __init__(self, eval_hook: EvalHook, patience: int):
        self.eval_hook, self.patience = eval_hook, patience

    def after_epoch(self, trainer: Trainer) -> None:
        if self.eval_hook.since_best >= self.patience:
            log.info("early stop: %s has not improved for %d validations", self.eval_hook.metric, self.patience)
            trainer.should_stop = True


class CheckpointHook(Hook):
    """Write checkpoints/last.pt every epoch, every `every` steps and/or `interval_s` seconds within one (rank 0's
    clock), and on interrupt; best.pt when validation improved. The last.pt it replaces is kept as last.prev.pt,
    which a resume falls back to when last.pt is unreadable."""

    def __init__(self, directory: Path | None, every: int | None = None, interval_s: float | None = None):
        self.directory, self.every, self.interval_s = directory, every, interval_s
        self.saved_at = time.monotonic()

    def save(self, trainer: Trainer, name: str) -> Path | None:
        """Called on every rank (each one's RNG state goes into the checkpoint); rank 0 writes."""
        rngs = dist.all_gather_objects(rng_state())
        if self.directory is None or not dist.is_main():
            return None
        path = self.directory / name
        if name == "last.pt" and path.is_file():
            os.replace(path, self.directory / PREVIOUS)
        self.saved_at = time.monotonic()
        return save_checkpoint(path, {**trainer.checkpoint_state(), "rng_ranks": rngs})

    def after_step(self, trainer: Trainer, outputs: dict) -> None:
        if trainer.batch_in_epoch == trainer.steps_per_epoch_batches:  # the epoch's end saves it anyway
            return
        due = bool(self.every) and trainer.step % self.every == 0
        if self.interval_s:  # rank 0's clock decides for all ranks
            due |= bool(dist.broadcast_object(time.monotonic() - self.saved_at >= self.interval_s))
        if due:
            self.save(trainer, "last.pt")

    def after_epoch(self, trainer: Trainer) -> None:
        last = self.save(trainer, "last.pt")
        if trainer.improved and last is not None:
            atomic_copy(last, self.directory / "best.pt")

    def on_interrupt(self, trainer: Trainer) -> None:
        self.save(trainer, "last.pt")
