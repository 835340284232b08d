"""Dataset roots from the `dataset` config: the embedded synthetic data is generated on first use."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from cvtool.data.shapes import ensure_shapes


def prepared_root(dataset_cfg: Mapping) -> Path | None:
    """dataset.root, after generating the synthetic shapes data there when the dataset is synthetic."""
    if dataset_cfg.get("root") is None:
        return None
    root = Path(dataset_cfg["root"])
    if dataset_cfg.get("synth"):
        params = dict(dataset_cfg["synth"])
        ensure_shapes(params.pop("kind"), root, **params)
    return root
