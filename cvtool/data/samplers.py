"""Samplers: a resumable DistributedSampler for training and an unpadded shard sampler for evaluation."""

from __future__ import annotations

import itertools

from torch.utils.data import Dataset, DistributedSampler, Sampler


class ResumableSampler(Sampler[int]):
    """torch's DistributedSampler (seeded per epoch; also used with one process) that can start an epoch
    part-way through, so a run interrupted mid-epoch resumes on exactly the remaining samples."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, shuffle: bool, seed: int,
                 drop_last: bool = False):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                        seed=seed, drop_last=drop_last)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


class ShardSampler(Sampler[int]):
    """Every `num_replicas`-th index starting at `rank`, without the padding DistributedSampler adds,
    so metrics summed over ranks count every sample exactly once."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int):
        self.indices = range(rank, len(dataset), num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
