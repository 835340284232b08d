"""Seeded stratified train/val splitting for datasets that ship without a validation split."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from cvtool.errors import CvtoolError


def stratified_split(targets: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split item indices into (train, val), taking `val_fraction` of every class for val.

    Each class is shuffled by its own generator seeded with (seed, label), so a class's split does not change
    when other classes are added or removed. Every class with >= 2 items keeps >= 1 item on each side when
    0 < val_fraction < 1. Both index lists come back sorted.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise CvtoolError(f"val_fraction must be in [0, 1], got {val_fraction}", fix="e.g. val_fraction=0.2")
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(targets):
        by_class[int(label)].append(index)
    train: list[int] = []
    val: list[int] = []
    for label, indices in by_class.items():
        n_val = _val_count(len(indices), val_fraction)
        rng = np.random.default_rng([seed, label])
        order = rng.permutation(len(indices))
        val.extend(indices[i] for i in order[:n_val])
        train.extend(indices[i] for i in order[n_val:])
    return sorted(train), sorted(val)


def _val_count(n: int, val_fraction: float) -> int:
    n_val = round(n * val_fraction)
    if n >= 2 and 0.0 < val_fraction < 1.0:
        n_val = min(max(n_val, 1), n - 1)
    return n_val
