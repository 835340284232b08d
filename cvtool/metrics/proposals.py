"""Proposal recall with detectron2's / Fast R-CNN's semantics (`_evaluate_box_proposals`). numpy only.

Per image the first N (ranked) proposals are matched one-to-one to the ground truth greedily: repeatedly the gt box
whose best remaining IoU is largest takes that proposal (first index on ties), and both leave the pool; a gt box
left without a proposal scores IoU 0. recall@t is the fraction of all gt boxes (the caller drops ignored/difficult
ones) whose matched IoU is >= t; AR is the mean recall over t = 0.5:0.05:0.95. Boxes are continuous XYXY (no +1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import ratio

COUNTS = (100, 300, 1000)
THRESHOLDS = np.arange(0.5, 0.951, 0.05)
REPORTED = (0.5, 0.7)  # thresholds with their own recall@t key


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of continuous XYXY boxes (0 where both boxes are empty)."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _area(boxes: np.ndarray) -> np.ndarray:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def greedy_overlaps(iou: np.ndarray) -> np.ndarray:
    """Each gt box's IoU under greedy one-to-one matching of an (proposals, gt) IoU matrix (0 if unmatched).

    Same result as detectron2's loop (recompute every column's maximum, take the best column, blank its row and
    column), but only the columns whose best proposal was just taken are recomputed."""
    iou = np.array(iou, dtype=np.float64)
    num_proposals, num_gt = iou.shape
    matched = np.zeros(num_gt)
    if num_proposals == 0 or num_gt == 0:
        return matched
    columns = np.arange(num_gt)
    best_row = iou.argmax(axis=0)
    best = iou[best_row, columns]
    for _ in range(min(num_proposals, num_gt)):
        gt = int(best.argmax())
        row = best_row[gt]
        matched[gt] = best[gt]
        iou[row, :] = -1.0
        iou[:, gt] = -1.0
        best[gt] = -np.inf
        stale = np.flatnonzero((best_row == row) & np.isfinite(best))
        best_row[stale] = iou[:, stale].argmax(axis=0)
        best[stale] = iou[best_row[stale], stale]
    return matched


def _matched_overlaps(gt: Sequence[np.ndarray], proposals: Sequence[np.ndarray],
                      counts: Sequence[int]) -> np.ndarray:
    """(len(counts), total gt) matched IoU of every gt box with the first `count` proposals of its image."""
    if len(gt) != len(proposals):
        raise ValueError(f"{len(gt)} ground-truth arrays but {len(proposals)} proposal arrays")
    if not counts or min(counts) < 1:
        raise ValueError(f"proposal counts must be >= 1, got {list(counts)}")
    per_image = []
    for gt_boxes, boxes in zip(gt, proposals):
        gt_boxes = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[:max(counts, default=0)]
        iou = box_iou(boxes, gt_boxes)
        per_image.append(np.stack([greedy_overlaps(iou[:count]) for count in counts]).reshape(len(counts), -1))
    return np.concatenate(per_image, axis=1) if per_image else np.zeros((len(counts), 0))


def recall_curve(gt: Sequence[np.ndarray], proposals: Sequence[np.ndarray], counts: Sequence[int],
                 thresholds: Sequence[float] = THRESHOLDS) -> dict[str, list[float | None]]:
    """{"recall@0.5": [...], "recall@0.7": [...], "AR": [...]}, one value per proposal count in `counts` (None
    without any gt box). `gt` and `proposals` are per-image (n, 4) continuous XYXY arrays, proposals ranked."""
    overlaps = _matched_overlaps(gt, proposals, list(counts))
    total = overlaps.shape[1]
    # rounded: arange's 0.7000000000000001 must not drop a gt matched at IoU exactly 0.7
    thresholds = np.round(np.asarray(thresholds, dtype=np.float64), 9)
    hits = (overlaps[:, :, None] >= thresholds[None, None, :]).sum(axis=1)  # (counts, thresholds)
    curve = {f"recall@{t:g}": [ratio((row >= t).sum(), total) for row in overlaps] for t in REPORTED}
    curve["AR"] = [ratio(h.mean(), total) for h in hits]
    return curve


def proposal_recall(gt: Sequence[np.ndarray], proposals: Sequence[np.ndarray], counts: Sequence[int] = COUNTS,
                    thresholds: Sequence[float] = THRESHOLDS) -> dict[str, dict[str, float | None]]:
    """{"recall@0.5": {"100": r, "300": r, "1000": r}, "recall@0.7": {...}, "AR": {...}}: `recall_curve` keyed by
    the proposal count as a string (the metrics JSON's form)."""
    curve = recall_curve(gt, proposals, counts, thresholds)
    return {key: {str(count): value for count, value in zip(counts, values)} for key, values in curve.items()}
