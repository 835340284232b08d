"""The evaluator interface shared by every task (detectron2-style), and the numpy boundary for model outputs.

Evaluators compute with numpy only, so stored predictions are evaluated without importing torch; tensors coming
from a model are converted on entry by `to_numpy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np


class Evaluator(Protocol):
    def reset(self) -> None:
        """Forget everything processed so far."""

    def process(self, inputs: Any, outputs: Any) -> None:
        """Accumulate one batch: `inputs` is the preprocessed batch (with targets), `outputs` the model's."""

    def evaluate(self) -> dict:
        """Final metrics (reduced over DDP ranks), following the metrics JSON contract of DESIGN.md §6."""


@dataclass(frozen=True)
class Baseline:
    """What a model that learned nothing scores on a task's metric: `value`, reached by `what` (e.g.
    "majority-class": always predicting the most frequent class)."""

    value: float
    what: str


def to_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """A numpy array from a tensor (any device/dtype, bf16 included), an array or a sequence."""
    if hasattr(value, "detach"):
        value = value.detach()
        if value.is_floating_point():
            value = value.float()
        value = value.cpu().numpy()
    return np.asarray(value, dtype=dtype)


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator as a Python float, None (JSON null) when the denominator is 0."""
    return float(numerator) / float(denominator) if denominator else None


def mean_defined(values: list[float | None]) -> float | None:
    """Mean of the defined (non-None) values; None when there are none."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def scalar_metrics(metrics: dict, prefix: str = "") -> dict[str, float]:
    """The defined numbers of a (nested) metrics dict under dotted keys ("top1", "voc10.mAP", "bbox.AP"),
    leaving out per-class breakdowns: what training logs and selects best.pt on."""
    scalars: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict) and not key.startswith("per_"):
            scalars.update(scalar_metrics(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            scalars[f"{prefix}{key}"] = value
    return scalars
