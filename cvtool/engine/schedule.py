"""Learning-rate schedules stepped every optimizer step: linear warmup, then cosine, poly, step or multistep."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

import torch


@dataclass
class LRFactor:
    """lr multiplier as a function of the optimizer step (a picklable object, so LambdaLR can save it).

    `params` holds the schedule's own keys from `sched/<name>.yaml` (min_lr_ratio, power, step_epochs, gamma,
    milestones); keys of other kinds are ignored.
    """

    name: str
    steps_per_epoch: int
    total_steps: int
    warmup_epochs: float
    warmup_start_ratio: float
    params: dict

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_epochs * self.steps_per_epoch)

    def __call__(self, step: int) -> float:
        warmup_steps = self.warmup_steps
        factor = self._main(step)
        if step < warmup_steps:
            factor *= self.warmup_start_ratio + (1.0 - self.warmup_start_ratio) * step / warmup_steps
        return factor

    def _main(self, step: int) -> float:
        p, epoch = self.params, step / self.steps_per_epoch
        if self.name == "cosine":
            progress = min(step / self.total_steps, 1.0)
            return p["min_lr_ratio"] + (1 - p["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.name == "poly":
            return (1.0 - min(step / self.total_steps, 1.0)) ** p["power"]
        if self.name == "step":
            return p["gamma"] ** math.floor(epoch / p["step_epochs"])
        if self.name == "multistep":
            return p["gamma"] ** bisect.bisect_right(sorted(p["milestones"]), epoch)
        raise ValueError(f"unknown schedule {self.name!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: dict, steps_per_epoch: int,
                    epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """LambdaLR over optimizer steps; `sched_cfg` is the plain `sched` config section."""
    cfg = dict(sched_cfg)
    steps_per_epoch = max(1, steps_per_epoch)
    factor = LRFactor(name=cfg.pop("name"), steps_per_epoch=steps_per_epoch, total_steps=steps_per_epoch * epochs,
                      warmup_epochs=cfg.pop("warmup_epochs"), warmup_start_ratio=cfg.pop("warmup_start_ratio"),
                      params=cfg)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
