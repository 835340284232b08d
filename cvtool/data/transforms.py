"""Transform factories that config `_target_`s name where torchvision's classes need a switch."""

from __future__ import annotations

from torchvision.transforms import v2

from cvtool.errors import CvtoolError


def horizontal_flip(enabled: bool, p: float) -> v2.Transform:
    """RandomHorizontalFlip(p) when `enabled` (dataset.hflip), else the identity."""
    if not isinstance(enabled, bool):
        raise CvtoolError(f"dataset.hflip must be true or false here, got {enabled!r}", where="dataset.hflip",
                          fix="pass dataset.hflip=true or dataset.hflip=false")
    return v2.RandomHorizontalFlip(p) if enabled else v2.Identity()
