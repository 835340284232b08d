"""Metric-learning losses: hand-computed cases, agreement with pytorch-metric-learning (pml) where the definitions
coincide, and finite gradients where embeddings coincide."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cvtool.errors import CvtoolError
from cvtool.tasks.metric_losses import (
    contrastive_loss,
    mean_pairwise_distance,
    pairwise_distance_matrix,
    triplet_loss,
)

# Four 1-D embeddings on a line, identities A = {0, 2}, B = {1, 3}:
#   x = 0 (A), 0.5 (B), 1 (A), 3 (B)
#   d01 = 0.5, d02 = 1, d03 = 3, d12 = 0.5, d13 = 2.5, d23 = 2
LINE = torch.tensor([[0.0], [0.5], [1.0], [3.0]])
LINE_LABELS = torch.tensor([0, 1, 0, 1])
MARGIN = 0.6


@pytest.fixture
def pml():
    """pytorch-metric-learning's distances, losses, miners and reducers modules."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import distances, losses, miners, reducers

    return SimpleNamespace(distances=distances, losses=losses, miners=miners, reducers=reducers)


def test_pairwise_distance_matrix_is_euclidean():
    expected = torch.tensor([[0, 0.5, 1, 3], [0.5, 0, 0.5, 2.5], [1, 0.5, 0, 2], [3, 2.5, 2, 0]])
    assert torch.allclose(pairwise_distance_matrix(LINE), expected, atol=1e-5)


def test_mean_pairwise_distance_averages_pairs_i_below_j():
    # (0.5 + 1 + 3 + 0.5 + 2.5 + 2) / 6
    assert mean_pairwise_distance(LINE).item() == pytest.approx(9.5 / 6, abs=1e-5)
    assert mean_pairwise_distance(torch.ones(5, 3)).item() == pytest.approx(0, abs=1e-5)


def test_batch_hard_takes_each_anchors_farthest_positive_and_closest_negative():
    # anchor 0: positive 2 (1.0), negatives 1 (0.5), 3 (3.0) -> 1.0 - 0.5 + 0.6 = 1.1
    # anchor 1: positive 3 (2.5), negatives 0 (0.5), 2 (0.5) -> 2.5 - 0.5 + 0.6 = 2.6
    # anchor 2: positive 0 (1.0), negatives 1 (0.5), 3 (2.0) -> 1.0 - 0.5 + 0.6 = 1.1
    # anchor 3: positive 1 (2.5), negatives 0 (3.0), 2 (2.0) -> 2.5 - 2.0 + 0.6 = 1.1
    loss = triplet_loss(LINE, LINE_LABELS, MARGIN, "batch_hard")
    assert loss.item() == pytest.approx((1.1 + 2.6 + 1.1 + 1.1) / 4, abs=1e-5)


def test_semi_hard_takes_the_closest_negative_beyond_the_positive_else_the_farthest():
    # (0, 2): d_ap 1.0; negatives 0.5, 3.0 -> beyond 1.0: 3.0 -> relu(1.0 - 3.0 + 0.6) = 0
    # (2, 0): d_ap 1.0; negatives 0.5, 2.0 -> 2.0 -> relu(1.0 - 2.0 + 0.6) = 0
    # (1, 3): d_ap 2.5; negatives 0.5, 0.5 -> none beyond: the farthest, 0.5 -> 2.5 - 0.5 + 0.6 = 2.6
    # (3, 1): d_ap 2.5; negatives 3.0, 2.0 -> 3.0 -> 2.5 - 3.0 + 0.6 = 0.1
    loss = triplet_loss(LINE, LINE_LABELS, MARGIN, "semi_hard")
    assert loss.item() == pytest.approx((2.6 + 0.1) / 4, abs=1e-5)


def test_batch_all_averages_the_triplets_with_a_positive_loss():
    # (0,2,1) 1.1  (0,2,3) 0   (2,0,1) 1.1  (2,0,3) 0   (1,3,0) 2.6  (1,3,2) 2.6  (3,1,0) 0.1  (3,1,2) 1.1
    loss = triplet_loss(LINE, LINE_LABELS, MARGIN, "all")
    assert loss.item() == pytest.approx((1.1 + 1.1 + 2.6 + 2.6 + 0.1 + 1.1) / 6, abs=1e-5)


def test_contrastive_averages_positive_and_negative_pairs_separately():
    # positives (0,2) d=1: 1/2 = 0.5, (1,3) d=2.5: 6.25/2 = 3.125 -> mean 1.8125
    # negatives, margin 1: (0,1) d=0.5: 0.25/2 = 0.125, (1,2) 0.125, (0,3) d=3: 0, (2,3) d=2: 0 -> mean 0.0625
    assert contrastive_loss(LINE, LINE_LABELS, margin=1.0).item() == pytest.approx(1.875, abs=1e-5)
    # one identity: six positive pairs (0.125 + 0.5 + 4.5 + 0.125 + 3.125 + 2) / 6, no negative pair (adds 0)
    assert contrastive_loss(LINE, torch.zeros(4), margin=1.0).item() == pytest.approx(10.375 / 6, abs=1e-5)


def test_triplet_without_triplets_is_zero_and_differentiable():
    x = torch.randn(4, 3, requires_grad=True)
    for mining in ("batch_hard", "semi_hard", "all"):
        loss = triplet_loss(x, torch.zeros(4, dtype=torch.long), mining=mining)  # no negatives
        loss.backward()
        assert loss.item() == 0 and torch.equal(x.grad, torch.zeros_like(x))


def test_unknown_mining_is_refused():
    with pytest.raises(CvtoolError, match="batch_hard, semi_hard, all"):
        triplet_loss(LINE, LINE_LABELS, mining="hardest")


@pytest.mark.parametrize("labels", [[0, 0, 1, 1], [0, 1, 0, 1]])
def test_gradients_are_finite_where_embeddings_coincide(labels):
    # rows 0 and 1 coincide: a positive pair at distance 0, then a negative pair at distance 0
    base = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.6, 0.8, 0.0]])
    labels = torch.tensor(labels)
    losses = {f"triplet {m}": lambda x, m=m: triplet_loss(x, labels, 1.0, m) for m in ("batch_hard", "semi_hard",
                                                                                          "all")}
    losses |= {"contrastive": lambda x: contrastive_loss(x, labels), "mean distance": mean_pairwise_distance}
    for name, loss_fn in losses.items():
        x = base.clone().requires_grad_(True)
        loss = loss_fn(F.normalize(x, dim=1))
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), name
        assert x.grad.abs().sum() > 0, name  # the other pairs still pull


def _batch(seed: int, identities: int, per_identity: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(identities * per_identity, 8, generator=generator), dim=1)
    return x, torch.arange(identities).repeat_interleave(per_identity)


def _pml_distance(pml):
    # pml's LpDistance normalises the embeddings by default; ours measures them as given
    return pml.distances.LpDistance(normalize_embeddings=False)


def test_batch_hard_equals_pml_batch_hard_miner_with_mean_reducer(pml):
    # pml: BatchHardMiner(distance) + TripletMarginLoss(margin, distance, reducer=MeanReducer()): the mean over the
    # mined anchors, zeros included (pml's default AvgNonZeroReducer would average only the non-zero ones)
    distance = _pml_distance(pml)
    miner = pml.miners.BatchHardMiner(distance=distance)
    reference = pml.losses.TripletMarginLoss(margin=0.2, distance=distance, reducer=pml.reducers.MeanReducer())
    for seed in range(3):
        x, labels = _batch(seed, 6, 4)
        ours_x, theirs_x = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ours = triplet_loss(ours_x, labels, 0.2, "batch_hard")
        theirs = reference(theirs_x, labels, miner(theirs_x, labels))
        ours.backward()
        theirs.backward()
        assert ours.item() == pytest.approx(theirs.item(), abs=1e-5)
        assert torch.allclose(ours_x.grad, theirs_x.grad, atol=1e-5)


def test_batch_all_equals_pml_triplet_margin_loss_defaults(pml):
    # pml: TripletMarginLoss(margin, distance) with its defaults triplets_per_anchor="all" and AvgNonZeroReducer
    reference = pml.losses.TripletMarginLoss(margin=0.2, distance=_pml_distance(pml))
    for seed in range(3):
        x, labels = _batch(seed, 6, 4)
        assert triplet_loss(x, labels, 0.2, "all").item() == pytest.approx(reference(x, labels).item(), abs=1e-5)


def test_semi_hard_equals_pml_easy_hard_miner_when_pairs_are_anchors(pml):
    # With K = 2 every anchor has one positive, so FaceNet's per-(anchor, positive) choice is pml's
    # BatchEasyHardMiner(pos_strategy="hard", neg_strategy="semihard"): the closest negative with d_an > d_ap.
    # pml drops an anchor without such a negative where we fall back to its farthest one, so the two agree exactly
    # when the miner keeps every anchor (asserted).
    distance = _pml_distance(pml)
    miner = pml.miners.BatchEasyHardMiner(pos_strategy="hard", neg_strategy="semihard", distance=distance)
    reference = pml.losses.TripletMarginLoss(margin=0.2, distance=distance, reducer=pml.reducers.MeanReducer())
    agreed = 0
    for seed in range(6):
        x, labels = _batch(seed, 12, 2)
        mined = miner(x, labels)
        if len(mined[0]) == len(x):
            assert triplet_loss(x, labels, 0.2, "semi_hard").item() == pytest.approx(
                reference(x, labels, mined).item(), abs=1e-5)
            agreed += 1
    assert agreed >= 3


def test_semi_hard_differs_from_pml_triplet_margin_miner(pml):
    # pml's TripletMarginMiner(type_of_triplets="semihard") keeps *every* triplet with 0 < d_an - d_ap <= margin
    # instead of one negative per pair. On LINE with margin 0.6 that is only (3, 1, 0): 3.0 - 2.5 = 0.5, loss 0.1,
    # while FaceNet's rule (test above) gives 2.7 / 4.
    distance = _pml_distance(pml)
    miner = pml.miners.TripletMarginMiner(margin=MARGIN, type_of_triplets="semihard", distance=distance)
    mined = miner(LINE, LINE_LABELS)
    assert [t.tolist() for t in mined] == [[3], [1], [0]]
    reference = pml.losses.TripletMarginLoss(margin=MARGIN, distance=distance, reducer=pml.reducers.MeanReducer())
    assert reference(LINE, LINE_LABELS, mined).item() == pytest.approx(0.1, abs=1e-5)
    assert triplet_loss(LINE, LINE_LABELS, MARGIN, "semi_hard").item() == pytest.approx(2.7 / 4, abs=1e-5)


def test_contrastive_weighting_matches_pml_mean_reducer_on_squared_distances(pml):
    # pml's ContrastiveLoss is relu(d - pos_margin) + relu(neg_margin - d), not squared, so it cannot equal ours in
    # general. With LpDistance(power=2) its positive term is d^2 and, with MeanReducer, its two halves are averaged
    # separately as ours: with every negative beyond the margin (neg_margin = 0 here) pml = 2 x ours.
    distance = pml.distances.LpDistance(normalize_embeddings=False, power=2)
    reference = pml.losses.ContrastiveLoss(pos_margin=0, neg_margin=0, distance=distance,
                                           reducer=pml.reducers.MeanReducer())
    x, labels = _batch(0, 3, 4)
    assert contrastive_loss(x, labels, margin=0.0).item() == pytest.approx(reference(x, labels).item() / 2, abs=1e-5)
