"""Samplers: a resumable DistributedSampler for training and an unpadded shard sampler for evaluation."""

from __future__ import annotations

import itertools

from torch.utils.data import Dataset, DistributedSampler, Sampler


class ResumableSampler(Sampler[int]):
    """torch's DistributedSampler (seeded per epoch; also used with one process) that can start an epoch
    part-way through, so a run interrupted mid-epoch resumes on exactly the remaining samples."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, shuffle: bool, seed: int,
                 drop_last: bool = False, groups: list[int] | None = None, batch_size: int = 1):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                        seed=seed, drop_last=drop_last)
        self.groups, self.batch_size = groups, batch_size
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        order = iter(self.inner) if self.groups is None else grouped(list(self.inner), self.groups, self.batch_size)
        return itertools.islice(order, self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


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
