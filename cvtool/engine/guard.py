"""A run that learns nothing says so: one warning line when validation stays at the task's trivial baseline, or when
the training loss after warmup rises far above its first value; the warnings are also kept for metrics.json."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from cvtool.utils import distributed as dist

from .hooks import EvalHook, Hook

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger("cvtool.train")


class LearningGuardHook(Hook):
    """Watches, never changes, training. "no_learning": validations after warmup at or below the task's trivial
    baseline (majority class, background-only mIoU, zero mAP) plus `margin` of the headroom above it, counted
    whenever they happen (a collapse after a good start too), reach `fraction` of the run's validations (and at
    least two).
    "loss_diverged": an epoch's mean training loss after the warmup's `warmup_steps` exceeds `loss_rise` x the
    loss of the first step. Each is logged once when seen and again at the end, and kept in `warnings`."""

    def __init__(self, eval_hook: EvalHook, *, margin: float, fraction: float, loss_rise: float, warmup_steps: int):
        self.eval_hook, self.margin, self.fraction = eval_hook, margin, fraction
        self.loss_rise, self.warmup_steps = loss_rise, warmup_steps
        self.validated = self.at_baseline = 0
        self.first_loss: float | None = None
        self.warnings: list[dict] = []
        self._first = None  # the first step's loss tensor, read at the epoch's end (no device sync per step)
        self._loss_sum, self._loss_n = 0.0, 0

    def before_epoch(self, trainer: Trainer) -> None:
        self._loss_sum, self._loss_n = 0.0, 0

    def after_step(self, trainer: Trainer, outputs: dict) -> None:
        loss = outputs["loss"].detach().float()
        if trainer.step == 1 and self.first_loss is None:
            self._first = loss
        if trainer.step > self.warmup_steps:
            self._loss_sum = self._loss_sum + loss
            self._loss_n += 1

    def after_epoch(self, trainer: Trainer) -> None:
        self._check_loss(trainer)
        self._check_validation(trainer)

    def _check_loss(self, trainer: Trainer) -> None:
        first = self._first_loss()
        if not self._loss_n or not first or first <= 0:
            return
        mean = float(self._loss_sum) / self._loss_n
        if mean > self.loss_rise * first:
            rise = mean / first
            self._warn(trainer, "loss_diverged", f"the training loss is diverging: its mean over epoch "
                                                 f"{trainer.epoch} after warmup, {mean:.4g}, is "
                                                 f"{rise:.{1 if rise < 10 else 0}f}x its first value {first:.4g}")

    def _check_validation(self, trainer: Trainer) -> None:
        metric = self.eval_hook.metric
        value = (trainer.val_metrics_this_epoch or {}).get(metric)
        after_warmup = trainer.step >= self.warmup_steps  # before, low learning rates excuse a model at baseline
        baseline = trainer.task.trivial_baseline(self.eval_hook.evaluator) if value is not None else None
        if baseline is None or not after_warmup:
            return
        self.validated += 1
        if value > baseline.value + self.margin * (1.0 - baseline.value):
            return
        self.at_baseline += 1
        planned = self._planned_validations(trainer)
        if self.at_baseline >= min(planned, max(2, math.ceil(self.fraction * planned - 1e-9))):
            self._warn(trainer, "no_learning", f"the model is not learning: val {metric} is {value:.4f}, no better "
                                               f"than the {baseline.what} baseline ({baseline.value:.4f}) in "
                                               f"{self.at_baseline} of the {self.validated} validations so far "
                                               f"(epoch {trainer.epoch} of {trainer.epochs})")

    def _planned_validations(self, trainer: Trainer) -> int:
        every = self.eval_hook.every
        return sum(1 for epoch in range(1, trainer.epochs + 1) if epoch % every == 0 or epoch == trainer.epochs)

    def _warn(self, trainer: Trainer, kind: str, seen: str) -> None:
        """Log `seen` with the likely causes and fixes, once per kind."""
        if any(w["kind"] == kind for w in self.warnings):
            return
        amp = ", reduced precision (hardware.amp=off)" if trainer.hardware.amp_dtype is not None else ""
        message = (f"{seen} — likely causes: too high a learning rate (lower optim.lr, e.g. 10x){amp}, or the "
                   "data (check it with `cvtool data check`)")
        self.warnings.append({"kind": kind, "epoch": trainer.epoch, "message": message})
        if dist.is_main():
            log.warning(message)

    def after_train(self, trainer: Trainer) -> None:
        if dist.is_main():
            for warning in self.warnings:
                log.warning("this run (epoch %d): %s", warning["epoch"], warning["message"])

    def _first_loss(self) -> float | None:
        if self._first is not None:
            self.first_loss, self._first = float(self._first), None
        return self.first_loss

    def state_dict(self) -> dict:
        return {"validated": self.validated, "at_baseline": self.at_baseline, "first_loss": self._first_loss(),
                "warnings": self.warnings}

    def load_state_dict(self, state: dict) -> None:
        self.validated, self.at_baseline = state["validated"], state["at_baseline"]
        self.first_loss, self.warnings = state["first_loss"], list(state["warnings"])
