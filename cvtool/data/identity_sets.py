"""Identity folders (the LFW layout `root/<identity>/<identity>_0001.jpg`), split by identity: training and test
identities are disjoint, and the test identities come with LFW verification pairs (read or generated)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from cvtool.errors import CvtoolError

from .classification_sets import ClassificationSet, ImageFileSet, _drop_unreadable
from .identity_folders import IdentityImage, scan_identities, split_identities

__all__ = ["IdentityImage", "IdentitySet", "identity_set", "refuse_overlap", "scan_identities", "split_identities",
           "trainable_identities"]

log = logging.getLogger("cvtool.data")

class IdentitySet(Dataset):
    """Images of a set of identities; items are (uint8 image C×H×W after `transform`, identity label, item index).

    `identities` are the split's identity names (labels index them); `classes` are the model's classes (its training
    identities; for the training split the same list). `pairs` (test splits): the verification pairs."""

    def __init__(self, images: ClassificationSet, identities: list[str], numbers: list[int], source: str,
                 classes: list[str] | None = None):
        self.images, self.identities, self.numbers, self.source = images, identities, numbers, source
        self.classes = list(identities if classes is None else classes)
        self.channels, self.files = images.channels, images.files
        self.transform = None
        self.pairs: list | None = None
        self.pairs_source: str | None = None
        self.in_memory_data = images.in_memory_data

    @property
    def targets(self) -> list[int]:
        return self.images.targets

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        image = self.images.load_image(index)
        return (self.transform(image) if self.transform else image), self.images.targets[index], index

    def cache(self) -> IdentitySet:
        """Decode every image into memory once (they must share one size)."""
        self.images = self.images.in_memory()
        self.in_memory_data = True
        return self

    def subset(self, indices: Sequence[int]) -> IdentitySet:
        """The items `indices` (data.limit), with the pairs whose two images both remain."""
        chosen = IdentitySet(_Selected(self.images, list(indices)), self.identities,
                             [self.numbers[i] for i in indices], f"{self.source}, subset of {len(indices)}",
                             self.classes)
        chosen.transform = self.transform
        if self.pairs is not None:
            kept = {(self.identities[self.targets[i]], self.numbers[i]) for i in indices}
            chosen.pairs = [p for p in self.pairs if p.left in kept and p.right in kept]
            chosen.pairs_source = self.pairs_source
        return chosen

    def available(self) -> dict[str, set[int]]:
        """identity -> the image numbers present (what a pairs file may name)."""
        found: dict[str, set[int]] = {name: set() for name in self.identities}
        for label, number in zip(self.targets, self.numbers):
            found[self.identities[label]].add(number)
        return found

    def pair_indices(self) -> np.ndarray | None:
        """The pairs as (P, 4) int rows (item i, item j, same 0/1, fold), or None without pairs."""
        if self.pairs is None:
            return None
        index = {(self.identities[label], number): i for i, (label, number) in
                 enumerate(zip(self.targets, self.numbers))}
        return np.asarray([(index[p.left], index[p.right], int(p.same), p.fold) for p in self.pairs],
                          dtype=np.int64).reshape(-1, 4)


class _Selected(ClassificationSet):
    """Some items of another ClassificationSet (decoded or cached as it is)."""

    def __init__(self, base: ClassificationSet, indices: list[int]):
        super().__init__(base.classes, [base.targets[i] for i in indices], base.channels, base.source)
        self.base, self.indices = base, indices
        self.files = [base.files[i] for i in indices] if base.files else None
        self.in_memory_data = base.in_memory_data

    def load_image(self, index: int) -> torch.Tensor:
        return self.base.load_image(self.indices[index])


def identity_set(found: dict[str, list[IdentityImage]], names: Sequence[str], *, source: str, channels: int,
                 skip_invalid: bool, classes: list[str] | None = None) -> IdentitySet:
    """The images of identities `names` (labels in that order) as an IdentitySet (lazily decoded)."""
    files, labels, numbers = [], [], []
    for label, name in enumerate(names):
        for image in found[name]:
            files.append(image.path)
            labels.append(label)
            numbers.append(image.number)
    skipped = 0
    if skip_invalid:
        kept = set(_drop_unreadable(files, labels)[0])
        keep = [i for i, path in enumerate(files) if path in kept]
        skipped = len(files) - len(keep)
        files, labels, numbers = [files[i] for i in keep], [labels[i] for i in keep], [numbers[i] for i in keep]
    images = ImageFileSet(files, labels, list(names), source, skipped, channels=channels)
    return IdentitySet(images, list(names), numbers, source, classes)


def refuse_overlap(train: Sequence[str], test: Sequence[str], where: str, what: str) -> None:
    """Test identities that also occur in training are refused: they would inflate every number."""
    shared = sorted(set(train) & set(test))
    if shared:
        shown = ", ".join(shared[:5]) + (", ..." if len(shared) > 5 else "")
        raise CvtoolError(f"{len(shared)} test identit{'y' if len(shared) == 1 else 'ies'} also in {what}: {shown}",
                          where=where, fix="test identities must be unseen in training: remove them from the "
                                           "training data or evaluate on other identities")


def trainable_identities(labels: Sequence[int], k: int, p: int, where: str) -> list[int]:
    """The labels of identities with at least `k` images (P×K sampling draws only these); the others are skipped
    with a count, and fewer than `p` left is an error."""
    all_counts = np.bincount(np.asarray(labels, dtype=np.int64))
    counts = all_counts[all_counts > 0]
    eligible = np.flatnonzero(all_counts >= k).tolist()
    if len(eligible) < len(counts):
        log.warning("%d of %d training identities have fewer than %d images: P×K sampling skips them",
                    len(counts) - len(eligible), len(counts), k)
    if len(eligible) < p:
        raise CvtoolError(f"only {len(eligible)} training identities have at least {k} images, and a P×K batch "
                          f"needs {p}", where=where,
                          fix="lower data.images_per_identity (K) or data.batch_size (P×K), or add images")
    return eligible
