"""Metric-learning losses on a batch of embeddings and their identity labels: contrastive (Hadsell et al. 2006) and
triplet with online mining (batch-hard: Hermans et al. 2017; semi-hard: Schroff et al. 2015; batch-all). Every
distance is Euclidean on the embeddings as given, computed in float32."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cvtool.errors import CvtoolError

MININGS = ("batch_hard", "semi_hard", "all")
_EPS = 1e-12  # inside the square root: d = sqrt(d^2 + eps) has a finite gradient where two embeddings coincide


def pairwise_distance_matrix(embeddings: Tensor) -> Tensor:
    """(B, B) Euclidean distances between the rows of `embeddings` (B, D), as sqrt(max(d^2, 0) + 1e-12): the
    diagonal and coinciding rows are ~1e-6, not 0, and their gradient is finite (zero) rather than NaN."""
    return torch.sqrt(_squared_distances(embeddings) + _EPS)


def _squared_distances(embeddings: Tensor) -> Tensor:
    """|x_i|^2 + |x_j|^2 - 2 x_i.x_j in float32, clamped at 0 (rounding can make it slightly negative)."""
    x = embeddings.float()
    norms = x.pow(2).sum(1)
    return (norms[:, None] + norms[None, :] - 2 * x @ x.T).clamp(min=0)


def mean_pairwise_distance(embeddings: Tensor) -> Tensor:
    """Mean distance over the pairs i < j of the batch: a collapse monitor (it falls towards 0 when every input
    gets the same embedding); NaN for a batch of one."""
    i, j = torch.triu_indices(len(embeddings), len(embeddings), offset=1, device=embeddings.device)
    return pairwise_distance_matrix(embeddings)[i, j].mean()


def contrastive_loss(embeddings: Tensor, labels: Tensor, margin: float = 1.0) -> Tensor:
    """Hadsell et al. 2006 over every pair i < j of the batch: d^2 / 2 for the same identity, max(0, margin - d)^2 / 2
    for different ones. Returns mean over the positive pairs + mean over the negative pairs: each half is averaged on
    its own so that the far more numerous negatives of a P x K batch do not swamp the positives (an empty half
    adds 0)."""
    i, j = torch.triu_indices(len(embeddings), len(embeddings), offset=1, device=embeddings.device)
    same = labels[i] == labels[j]
    squared = _squared_distances(embeddings)[i, j]
    positive = squared[same] / 2
    negative = F.relu(margin - torch.sqrt(squared[~same] + _EPS)).pow(2) / 2
    return _mean(positive, embeddings) + _mean(negative, embeddings)


def triplet_loss(embeddings: Tensor, labels: Tensor, margin: float = 0.2, mining: str = "batch_hard") -> Tensor:
    """Triplet loss relu(d_ap - d_an + margin) on triplets mined in the batch (`mining`, see MININGS):

    - batch_hard (Hermans et al. 2017): per anchor its farthest positive and closest negative; the mean over the
      anchors having both;
    - semi_hard (Schroff et al. 2015, FaceNet): per ordered (anchor, positive) pair the closest negative farther
      than the positive (d_an > d_ap); where there is none, the anchor's farthest negative, as TF-Addons'
      triplet_semihard_loss does; the mean over the pairs whose anchor has a negative;
    - all (Hermans' batch-all): every (anchor, positive, negative); the mean over the triplets with a positive loss.

    A batch without any such triplet (e.g. one identity) gives 0, still attached to the graph."""
    if mining not in MININGS:
        raise CvtoolError(f"unknown triplet mining {mining!r}", where="task.mining",
                          fix=f"use one of {', '.join(MININGS)}")
    dist = pairwise_distance_matrix(embeddings)
    same = labels[:, None] == labels[None, :]
    positives = same & ~torch.eye(len(labels), dtype=torch.bool, device=same.device)
    negatives = ~same
    mine = {"batch_hard": _batch_hard, "semi_hard": _semi_hard, "all": _batch_all}[mining]
    return _mean(mine(dist, positives, negatives, margin), embeddings)


def _batch_hard(dist: Tensor, positives: Tensor, negatives: Tensor, margin: float) -> Tensor:
    """Per anchor having a positive and a negative: relu(its largest d_ap - its smallest d_an + margin)."""
    keep = positives.any(1) & negatives.any(1)
    hardest_positive = dist.masked_fill(~positives, float("-inf")).amax(1)
    hardest_negative = dist.masked_fill(~negatives, float("inf")).amin(1)
    return F.relu(hardest_positive[keep] - hardest_negative[keep] + margin)


def _semi_hard(dist: Tensor, positives: Tensor, negatives: Tensor, margin: float) -> Tensor:
    """Per (anchor, positive) pair whose anchor has a negative: relu(d_ap - d_an + margin) with n the semi-hard
    negative (see triplet_loss), found by a binary search in the anchor's sorted negative distances."""
    sorted_negatives, _ = dist.masked_fill(~negatives, float("inf")).sort(1)  # the anchor's negatives first
    count = negatives.sum(1, keepdim=True)
    first_beyond = torch.searchsorted(sorted_negatives.detach(), dist.detach(), right=True)  # first d_an > d_ap
    chosen = torch.where(first_beyond < count, first_beyond, count - 1).clamp(min=0)  # none: the farthest
    negative = sorted_negatives.gather(1, chosen)
    keep = positives & (count > 0)
    return F.relu(dist[keep] - negative[keep] + margin)


def _batch_all(dist: Tensor, positives: Tensor, negatives: Tensor, margin: float) -> Tensor:
    """relu(d_ap - d_an + margin) of every valid (a, p, n), only those above 0 (the mean is over them)."""
    valid = positives[:, :, None] & negatives[:, None, :]
    losses = F.relu(dist[:, :, None] - dist[:, None, :] + margin)[valid]
    return losses[losses > 0]


def _mean(losses: Tensor, embeddings: Tensor) -> Tensor:
    """The mean of `losses`, or a zero attached to `embeddings` when there are none (so backward still runs)."""
    return losses.mean() if losses.numel() else embeddings.sum() * 0.0
