"""Classification accuracy: top-1, top-k and per-class accuracy over all samples, plus the confusion matrix."""

from __future__ import annotations

import numpy as np

from cvtool.utils import distributed as dist

from .base import ratio, to_numpy


def target_rank(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each target among its row's logits, ties ordered by class index (as argmax/topk do):
    the number of larger logits plus the number of equal logits at lower class indices."""
    target_logit = np.take_along_axis(logits, targets[:, None], axis=1)
    lower_index = np.arange(logits.shape[1])[None, :] < targets[:, None]
    return (logits > target_logit).sum(axis=1) + ((logits == target_logit) & lower_index).sum(axis=1)


def constant_prediction_accuracy(class_counts: np.ndarray, k: int = 1) -> float | None:
    """Top-k accuracy of a classifier that ranks the classes the same way for every input, most frequent first (the
    best input-blind one): the share of the k most frequent classes; top-1 = the majority class's share."""
    counts = np.sort(np.asarray(class_counts))[::-1]
    return ratio(counts[:k].sum(), counts.sum())


class ClassificationEvaluator:
    """`process(inputs, logits)` with inputs["target"]. top-k (k capped at the number of classes) is the fraction
    of all samples whose target is among the k largest logits; counts are summed over DDP ranks."""

    def __init__(self, num_classes: int, topk: int = 5):
        self.num_classes, self.k = num_classes, min(topk, num_classes)
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)  # [true, predicted]
        self.topk_hits = np.zeros(self.num_classes, dtype=np.int64)  # per true class

    def process(self, inputs: dict, outputs) -> None:
        logits = to_numpy(outputs, np.float64)
        targets = to_numpy(inputs["target"], np.int64)
        n = self.num_classes
        predicted = logits.argmax(axis=1)
        self.confusion += np.bincount(targets * n + predicted, minlength=n * n).reshape(n, n)
        hits = target_rank(logits, targets) < self.k
        self.topk_hits += np.bincount(targets[hits], minlength=n)

    def protocol(self) -> str:
        return (f"top-1/top-{self.k} = fraction of all {int(self.confusion.sum())} samples whose target is among the "
                "k largest logits (ties ranked by class index, as argmax); per-class accuracy within each true class")

    def evaluate(self) -> dict:
        self.confusion = dist.all_reduce_sum(self.confusion)
        self.topk_hits = dist.all_reduce_sum(self.topk_hits)
        seen = self.confusion.sum(axis=1)
        total = int(seen.sum())
        correct = np.diag(self.confusion)
        return {"top1": ratio(correct.sum(), total), "top5": ratio(self.topk_hits.sum(), total),
                "num_samples": total, "per_class_acc": [ratio(c, s) for c, s in zip(correct, seen)]}
