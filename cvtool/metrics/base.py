"""The evaluator interface shared by every task (detectron2-style)."""

from __future__ import annotations

from typing import Any, Protocol


class Evaluator(Protocol):
    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, inputs: Any, outputs: Any) -> None:
        """Accumulate one batch: `inputs` is the preprocessed batch (with targets), `outputs` the model's."""

    def evaluate(self) -> dict:
        """Final metrics (reduced over DDP ranks), following the metrics JSON contract of DESIGN.md §6."""
