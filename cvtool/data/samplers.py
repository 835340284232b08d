"""Samplers: a resumable DistributedSampler for training and an unpadded shard sampler for evaluation."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, Subset, WeightedRandomSampler

from cvtool.errors import CvtoolError


class ResumableSampler(Sampler[int]):
    """torch's DistributedSampler (seeded per epoch; also used with one process) that can start an epoch
    part-way through: `set_epoch(epoch, skip)` skips the first `skip` samples of the epoch's global order. With
    DistributedSampler's interleaving, n samples per rank on W ranks are the first n*W of that order, so a run
    resumed on another number of ranks continues with exactly the samples not seen yet. With per-item `weights`
    (data.sampler=balanced) the epoch's order is a seeded weighted draw instead, sharded and skipped alike. With
    `identities` = (labels, p, k) (data.sampler=identities) it is the P x K batches of `identity_batches` for
    seed + epoch, dealt to the ranks whole (rank r gets batches r, r + W, ...)."""

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, shuffle: bool, seed: int,
                 drop_last: bool = False, groups: list[int] | None = None, batch_size: int = 1,
                 weights: list[float] | None = None, identities: tuple[Sequence[int], int, int] | None = None):
        self.inner = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                        seed=seed, drop_last=drop_last)
        self.groups, self.batch_size = groups, batch_size
        self.weights = weights  # per item: the epoch's order is drawn with replacement in proportion to them
        self.identities = identities
        if identities is not None:
            _check_identity_batch_size(batch_size, *identities[1:])
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

    def _identity_rest(self, skip: int) -> list[int]:
        """This rank's P x K batches of the epoch after the first `skip` samples (whole batches, over all ranks),
        padded with the epoch's first batches so that every rank gets as many."""
        labels, p, k = self.identities
        batches = identity_batches(labels, p, k, self.inner.seed + self.inner.epoch)
        rest = batches[skip // (p * k):]
        rest += batches[:(-len(rest)) % self.inner.num_replicas]
        return [index for batch in rest[self.inner.rank::self.inner.num_replicas] for index in batch]

    def __iter__(self):
        if self.identities is not None:
            return iter(self._identity_rest(self.skip))
        if self.groups is None:
            return iter(self._rest(self.skip))
        order = grouped(self._rest(0), self.groups, self.batch_size)  # (by rank: skip in this rank's batches)
        return itertools.islice(order, self.skip // self.inner.num_replicas, None)

    def __len__(self) -> int:
        if self.identities is not None:
            labels, p, k = self.identities
            left = max(0, identity_batch_count(len(labels), p, k) - self.skip // (p * k))
            return math.ceil(left / self.inner.num_replicas) * p * k
        if self.groups is None:
            return math.ceil(max(0, self.inner.total_size - self.skip) / self.inner.num_replicas)
        return max(0, len(self.inner) - self.skip // self.inner.num_replicas)


def identity_batch_count(items: int, p: int, k: int) -> int:
    """P x K batches per epoch: as many as fill about one pass over `items` images (at least one)."""
    return max(1, items // (p * k))


def identity_batches(labels: Sequence[int], p: int, k: int, seed: int) -> list[list[int]]:
    """One epoch of P x K batches (Hermans et al. 2017), seeded: each batch holds `k` distinct items of each of `p`
    distinct identities, identity by identity. Identities with fewer than `k` items are never drawn (the caller
    reports them). Each batch draws its identities without replacement in proportion to their item counts, and each
    identity deals its items in reshuffled rounds of k-item chunks, so every eligible item comes about equally
    often; an epoch has identity_batch_count(len(labels), p, k) batches."""
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        members.setdefault(label, []).append(index)
    eligible = [items for _, items in sorted(members.items()) if len(items) >= k]
    if len(eligible) < p:
        raise CvtoolError(f"P x K batches need {p} identities with at least {k} images each, the data has "
                          f"{len(eligible)}", where="data.images_per_identity",
                          fix="lower data.images_per_identity (K) or data.batch_size (P x K), or add identities")
    generator = torch.Generator().manual_seed(seed)
    weights = torch.tensor([len(items) for items in eligible], dtype=torch.float)
    rounds: list[list[int]] = [[] for _ in eligible]  # each identity's items left in its current round
    batches = []
    for _ in range(identity_batch_count(len(labels), p, k)):
        batch = []
        for chosen in torch.multinomial(weights, p, replacement=False, generator=generator).tolist():
            if len(rounds[chosen]) < k:  # a new round, reshuffled (the < k items left over sit this one out)
                items = eligible[chosen]
                rounds[chosen] = [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
            batch += rounds[chosen][:k]
            del rounds[chosen][:k]
        batches.append(batch)
    return batches


def _check_identity_batch_size(batch_size: int, p: int, k: int) -> None:
    """Refuse a data.batch_size that is not the P x K of the batches (the loader would cut across them)."""
    if p < 1 or k < 1:
        raise ValueError(f"P x K batches need p, k >= 1, got p={p}, k={k}")
    if batch_size != p * k:
        raise CvtoolError(f"data.batch_size={batch_size} but P x K batches hold {p} x {k} = {p * k} images",
                          where="data.batch_size", fix=f"set data.batch_size={p * k} (a multiple of K={k})")


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
