"""What the engine needs from a task adapter (the only place task differences live)."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from cvtool.engine.hardware import Hardware
from cvtool.metrics.base import Baseline


class Task(Protocol):
    name: str
    amp_inference: bool  # evaluate under the configured AMP autocast (False: always full precision)

    def preprocess(self, batch: Any, hardware: Hardware) -> Any:
        """Move a collated batch to the device and finish its conversion (dtype, normalisation, layout)."""

    def batch_size(self, batch: Any) -> int: ...

    def training_step(self, model: torch.nn.Module, batch: Any) -> dict[str, torch.Tensor]:
        """Forward pass in train mode; returns at least {"loss": scalar tensor}."""

    def inference_step(self, model: torch.nn.Module, batch: Any) -> Any:
        """Forward pass in eval mode; the outputs the task's evaluator and postprocess understand."""

    def trivial_baseline(self, evaluator: Any) -> Baseline | None:
        """What a model that learned nothing scores on the task's metric, on the split `evaluator` has just
        evaluated (None when the metric has no such baseline)."""
