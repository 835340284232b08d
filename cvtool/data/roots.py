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
        from omegaconf import OmegaConf

        synth = dataset_cfg["synth"]
        params = OmegaConf.to_container(synth, resolve=True) if OmegaConf.is_config(synth) else dict(synth)
        ensure_shapes(params.pop("kind"), root, **params)
    return root
