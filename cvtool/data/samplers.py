"""Samplers: a resumable DistributedSampler for training and an unpadded shard sampler for evaluation."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, Subset, WeightedRandomSampler


class ResumableSampler(Sampler[int]):
    """torch's DistributedSampler (seeded per epoch; also used with one process) that can start an epoch
    part-way through: `set_epoch(epoch, skip)` skips the first `skip` samples of the epoch's global order. With
    DistributedSampler's interleaving, n samples per rank on W ranks are the first n*W of that order, so a run
    resumed on another number of ranks continues with exactly the samples not seen yet. With per-item `weights`
    (data.sampler=balanced) the epoch's order is a seeded weighted draw instead, sharded and skipped alike."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, shuffle: bool, seed: int,
                 drop_last: bool = False, groups: list[int] | None = None, batch_size: int = 1,
                 weights: list[float] | None = None):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                        seed=seed, drop_last=drop_last)
        self.groups, self.batch_size = groups, batch_size
        self.weights = weights  # per item: the epoch's order is drawn with replacement in proportion to them
        self.skip = 0
        self.generator = torch.Generator()  # the DataLoader's: its workers' base seed, drawn per epoch from here
                                            # (not from the global RNG, which a resumed run restores mid-epoch)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """`skip`: samples of the epoch already consumed, over all ranks."""
        self.inner.set_epoch(epoch)
        self.skip = skip
        self.generator.manual_seed((self.inner.seed + 1) * 1_000_003 + epoch * 1_009 + self.inner.rank)

    def _order(self) -> list[int]:
        """The epoch's global order: DistributedSampler's (seeded by seed + epoch), or with `weights` as many
        indices drawn from that generator as WeightedRandomSampler draws them (with replacement)."""
        inner = self.inner
        g = torch.Generator().manual_seed(inner.seed + inner.epoch)
        if self.weights is not None:
            return list(WeightedRandomSampler(self.weights, len(self.weights), replacement=True, generator=g))
        if inner.shuffle:
            return torch.randperm(len(inner.dataset), generator=g).tolist()
        return list(range(len(inner.dataset)))

    def _rest(self, skip: int) -> list[int]:
        """This rank's share of the epoch's global order after `skip` samples."""
        inner = self.inner
        if not skip and self.weights is None:
            return list(inner)
        order = self._order()  # DistributedSampler's padding and interleaving, after the skip
        padded = (order * math.ceil(inner.total_size / len(order)))[:inner.total_size]
        rest = padded[min(skip, len(padded)):]
        rest += order[:(-len(rest)) % inner.num_replicas]  # equal shares when `skip` was counted on other ranks
        return rest[inner.rank::inner.num_replicas]

    def __iter__(self):
        if self.groups is None:
            return iter(self._rest(self.skip))
        order = grouped(self._rest(0), self.groups, self.batch_size)  # (by rank: skip in this rank's batches)
        return itertools.islice(order, self.skip // self.inner.num_replicas, None)

    def __len__(self) -> int:
        if self.groups is None:
            return math.ceil(max(0, self.inner.total_size - self.skip) / self.inner.num_replicas)
        return max(0, len(self.inner) - self.skip // self.inner.num_replicas)


def item_labels(dataset: Dataset) -> list[int]:
    """The class index of every item of a classification set (`targets`) or of a torch Subset of one."""
    if isinstance(dataset, Subset):
        labels = item_labels(dataset.dataset)
        return [labels[i] for i in dataset.indices]
    return list(dataset.targets)


def class_balanced_weights(labels: Sequence[int]) -> list[float]:
    """Per-item sampling weights 1 / (items of its class): every class is drawn equally often on average."""
    counts = Counter(labels)
    return [1.0 / counts[label] for label in labels]


def grouped(order: list[int], groups: list[int], batch_size: int) -> list[int]:
    """`order` rearranged so that every run of `batch_size` consecutive indices shares one group (e.g. landscape vs
    portrait images: aspect-ratio grouping, as torchvision's GroupedBatchSampler); batches keep their order of
    completion and the incomplete ones come last."""
    pending: dict[int, list[int]] = {}
    out: list[int] = []
    for index in order:
        batch = pending.setdefault(groups[index], [])
        batch.append(index)
        if len(batch) == batch_size:
            out.extend(batch)
            batch.clear()
    for batch in pending.values():
        out.extend(batch)
    return out


class ShardSampler(Sampler[int]):
    """Every `num_replicas`-th index starting at `rank`, without the padding DistributedSampler adds,
    so metrics summed over ranks count every sample exactly once."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int):
        self.indices = range(rank, len(dataset), num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
