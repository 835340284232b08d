"""P x K sampling: identity_batches and ResumableSampler(identities=...) — batch composition, determinism, equal
use of the images, resuming mid-epoch and dealing whole batches to the ranks."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from cvtool.data.samplers import ResumableSampler, identity_batches
from cvtool.errors import CvtoolError

# identity i has i + 1 images (identities 0..9: 55 images); with K = 3, identities 0 and 1 are too small
LABELS = [identity for identity in range(10) for _ in range(identity + 1)]
P, K = 2, 3


def sampler(rank: int = 0, world: int = 1, labels=LABELS) -> ResumableSampler:
    return ResumableSampler(labels, num_replicas=world, rank=rank, shuffle=True, seed=7, batch_size=P * K,
                            identities=(labels, P, K))


def epoch(s: ResumableSampler, number: int, skip: int = 0) -> list[int]:
    s.set_epoch(number, skip)
    order = list(s)
    assert len(order) == len(s)
    return order


def chunks(order: list[int]) -> list[list[int]]:
    return [order[i:i + P * K] for i in range(0, len(order), P * K)]


def test_every_batch_holds_p_identities_with_k_distinct_images_each():
    batches = identity_batches(LABELS, P, K, seed=0)
    assert len(batches) == 55 // 6
    for batch in batches:
        assert len(set(batch)) == P * K
        counts = Counter(LABELS[i] for i in batch)
        assert len(counts) == P and set(counts.values()) == {K}
        assert min(counts) >= 2  # identities with fewer than K images never come


def test_batches_are_seeded():
    assert identity_batches(LABELS, P, K, seed=3) == identity_batches(LABELS, P, K, seed=3)
    assert identity_batches(LABELS, P, K, seed=3) != identity_batches(LABELS, P, K, seed=4)


def test_every_eligible_image_comes_about_equally_often():
    # 8 identities of 3..10 images (52 eligible of 55): 9 batches x 6 = 54 draws per epoch, ~1.04 per image; over
    # 200 epochs each image's mean should be ~1.04 whatever its identity's size
    uses = Counter(i for seed in range(200) for batch in identity_batches(LABELS, P, K, seed) for i in batch)
    per_image = {size: sum(uses[i] for i, label in enumerate(LABELS) if label == size - 1) / size / 200
                 for size in range(3, 11)}
    assert all(0.85 < mean < 1.25 for mean in per_image.values()), per_image
    assert uses[0] == uses[1] == uses[2] == 0


def test_too_few_eligible_identities_is_refused():
    with pytest.raises(CvtoolError, match="need 9 identities with at least 3 images each, the data has 8"):
        identity_batches(LABELS, 9, K, seed=0)


def test_batch_size_must_be_p_times_k():
    with pytest.raises(CvtoolError, match="data.batch_size=8 but P x K batches hold 2 x 3 = 6"):
        ResumableSampler(LABELS, num_replicas=1, rank=0, shuffle=True, seed=0, batch_size=8,
                         identities=(LABELS, P, K))


def test_the_epoch_order_is_the_seed_plus_epoch_batches():
    s = sampler()
    for number in (0, 1):
        assert chunks(epoch(s, number)) == identity_batches(LABELS, P, K, seed=7 + number)
    assert epoch(s, 0) != epoch(s, 1)


def test_resuming_with_skip_continues_the_same_order():
    s = sampler()
    full = epoch(s, 2)
    assert epoch(s, 2, skip=3 * P * K) == full[3 * P * K:]
    assert epoch(s, 2, skip=len(full)) == []


def test_two_ranks_get_alternate_whole_batches_covering_the_single_rank_order():
    single = chunks(epoch(sampler(), 1))  # 9 batches: rank 0 gets 0, 2, 4, 6, 8; rank 1 gets 1, 3, 5, 7, then 0
    ranks = [chunks(epoch(sampler(rank, 2), 1)) for rank in (0, 1)]
    assert ranks[0] == single[0::2]
    assert ranks[1] == single[1::2] + single[:1]  # padded with the epoch's first batch: equal shares
    assert {tuple(b) for b in ranks[0] + ranks[1]} == {tuple(b) for b in single}


def test_a_run_resumed_on_two_ranks_continues_after_the_batches_one_rank_saw():
    single = chunks(epoch(sampler(), 1))
    # one rank consumed 3 batches (skip = 3 x 6 samples): two ranks continue with batches 3, 4, ...
    ranks = [chunks(epoch(sampler(rank, 2), 1, skip=3 * P * K)) for rank in (0, 1)]
    assert ranks[0] == single[3::2] and ranks[1] == single[4::2]


def test_the_loader_yields_p_by_k_batches():
    data = TensorDataset(torch.arange(len(LABELS)), torch.tensor(LABELS))
    s = sampler()
    s.set_epoch(0)
    batches = list(DataLoader(data, batch_size=P * K, sampler=s))
    assert len(batches) == 9
    for _, labels in batches:
        assert sorted(Counter(labels.tolist()).values()) == [K] * P
