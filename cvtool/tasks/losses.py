"""Losses for imbalanced classes: per-class weights (given, or measured from the training labels) and the softmax
focal loss."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cvtool.errors import CvtoolError

log = logging.getLogger("cvtool")


def class_weights(value, classes: Sequence[str], measure: Callable[[], np.ndarray]) -> torch.Tensor | None:
    """`task.class_weights`: null -> None, auto -> `measure()` (on the training labels), a list -> itself, one
    non-negative number per class in the dataset's class order."""
    if value is None:
        return None
    if value == "auto":
        weights = [float(w) for w in measure()]
        log.info("task.class_weights=auto: %s", ", ".join(f"{c} {w:.3g}" for c, w in zip(classes, weights)))
    elif isinstance(value, list | tuple) and all(isinstance(v, int | float) and not isinstance(v, bool)
                                                 for v in value):
        weights = [float(v) for v in value]
    else:
        raise CvtoolError(f"task.class_weights must be null, auto or a list of numbers, got {value!r}",
                          where="task.class_weights", fix="e.g. task.class_weights=auto or task.class_weights=[1,5]")
    if len(weights) != len(classes):
        raise CvtoolError(f"task.class_weights has {len(weights)} values but the dataset has {len(classes)} classes: "
                          f"{', '.join(classes)}", where="task.class_weights",
                          fix=f"give {len(classes)} weights in that order, or task.class_weights=auto")
    if min(weights) < 0 or max(weights) <= 0:
        raise CvtoolError(f"task.class_weights must be non-negative and not all zero, got {weights}",
                          where="task.class_weights", fix="e.g. task.class_weights=auto")
    return torch.tensor(weights, dtype=torch.float32)


def balanced_weights(labels: Sequence[int], num_classes: int) -> np.ndarray:
    """scikit-learn's compute_class_weight("balanced"): n_items / (n_classes_present x count(c)); a class absent
    from the labels gets 1 (it has no items for its weight to act on)."""
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    present = np.unique(labels)
    weights = np.ones(num_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def median_frequency_weights(masks, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """Median frequency balancing (Eigen & Fergus 2015, SegNet): freq(c) = pixels of c / non-void pixels of the
    masks holding c, weight(c) = median(freq) / freq(c); a class in no mask gets 1."""
    pixels, holding = np.zeros(num_classes), np.zeros(num_classes)
    for mask in masks:
        values = np.asarray(mask).ravel()
        counts = np.bincount(values[values != ignore_index] if ignore_index is not None else values,
                             minlength=num_classes)[:num_classes]
        pixels += counts
        holding[counts > 0] += counts.sum()
    present = pixels > 0
    weights = np.ones(num_classes)
    if present.any():
        freq = pixels[present] / holding[present]
        weights[present] = np.median(freq) / freq
    return weights


def focal_loss(logits: torch.Tensor, target: torch.Tensor, *, gamma: float, weight: torch.Tensor | None = None,
               label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax focal loss (Lin et al. 2017), -alpha_c (1 - p_c)^gamma log p_c: F.cross_entropy with every log p_c
    scaled by (1 - p_c)^gamma, so class weights (alpha), label smoothing and class-probability targets (MixUp,
    CutMix) keep its conventions and normalisation; gamma=0 is cross-entropy."""
    log_p = logits.float().log_softmax(dim=1)
    # 1 - p as -expm1(log p) (exact near p = 1); the clamp keeps (1 - p)^gamma's gradient finite for gamma < 1
    terms = -(-torch.expm1(log_p)).clamp(min=torch.finfo(log_p.dtype).tiny).pow(gamma) * log_p
    num_classes = logits.shape[1]
    w = torch.ones(num_classes, device=logits.device) if weight is None else weight.to(logits.device)
    if target.is_floating_point():  # probabilities per class: the mean over the batch
        target = target * (1 - label_smoothing) + label_smoothing / num_classes
        return (terms * w * target).sum(dim=1).mean()
    hard = F.nll_loss(-terms, target, weight=weight if weight is None else w)
    if not label_smoothing:
        return hard
    # F.cross_entropy's label smoothing: the uniform part normalised like the hard part (by the targets' weights)
    uniform = (terms * w).sum() / (w[target].sum() if weight is not None else target.numel())
    return (1 - label_smoothing) * hard + label_smoothing / num_classes * uniform
