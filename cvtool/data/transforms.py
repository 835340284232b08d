"""Transform factories that config `_target_`s name where torchvision's classes need a switch, and the batch
transforms (MixUp/CutMix) applied after collation."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from cvtool.errors import CvtoolError


def horizontal_flip(enabled: bool, p: float) -> v2.Transform:
    """RandomHorizontalFlip(p) when `enabled` (dataset.hflip), else the identity."""
    if not isinstance(enabled, bool):
        raise CvtoolError(f"dataset.hflip must be true or false here, got {enabled!r}", where="dataset.hflip",
                          fix="pass dataset.hflip=true or dataset.hflip=false")
    return v2.RandomHorizontalFlip(p) if enabled else v2.Identity()


def fill_num_classes(transform, num_classes: int) -> None:
    """Set num_classes of every MixUp/CutMix inside `transform` (nested Compose/RandomChoice/RandomApply too)."""
    if isinstance(transform, v2.MixUp | v2.CutMix):
        if transform.num_classes not in (None, num_classes):
            raise CvtoolError(f"{type(transform).__name__} has num_classes={transform.num_classes} but the dataset "
                              f"has {num_classes} classes", where="dataset.batch_transforms",
                              fix="leave num_classes out: it is set from the dataset")
        transform.num_classes = num_classes
    for inner in getattr(transform, "transforms", None) or []:
        fill_num_classes(inner, num_classes)


class MixedBatches:
    """A collate function whose (images, labels) batches pass through a batch transform: images as float32 (MixUp
    blends pixels), labels come out as class probabilities (soft targets for the cross-entropy)."""

    def __init__(self, collate, transform):
        self.collate, self.transform = collate, transform

    def __call__(self, items: list) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.collate(items)
        return self.transform(images.float(), labels)
