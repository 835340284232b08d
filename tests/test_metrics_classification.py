"""Classification accuracy: top-k over all samples, argmax-style tie ranking, per-class accuracy."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import top_k_accuracy_score

from cvtool.metrics.classification import ClassificationEvaluator, target_rank

BASE = np.array([6.0, 5, 4, 3, 2, 1, 0])  # class c has rank c


def test_uneven_batches_count_all_samples():
    ev = ClassificationEvaluator(num_classes=7, topk=5)
    ev.process({"target": np.array([0, 1, 2, 3, 4, 5, 5])}, np.tile(BASE, (7, 1)))  # top1 1/7, top5 5/7
    ev.process({"target": np.array([0])}, BASE[None])  # top1 1/1, top5 1/1
    m = ev.evaluate()
    # all samples: top1 (1 + 1) / 8 = 0.25 (mean of batches would be (1/7 + 1) / 2); top5 (5 + 1) / 8
    assert m["top1"] == 0.25 and m["top5"] == 0.75 and m["num_samples"] == 8
    # class 0: 2 of 2; classes 1-4: 0 of 1; class 5: 0 of 2; class 6: no samples
    assert m["per_class_acc"] == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, None]


def test_ties_ranked_by_class_index():
    # rank = #greater + #equal at a lower index: all-equal row -> rank = target index
    assert target_rank(np.zeros((3, 6)), np.array([0, 3, 5])).tolist() == [0, 3, 5]
    # row [1, 2, 2, 0]: target 0 -> 2 greater; 1 -> 0 (argmax); 2 -> 0 greater + class 1 equal; 3 -> 3 greater
    assert target_rank(np.array([[1.0, 2, 2, 0]] * 4), np.arange(4)).tolist() == [2, 0, 1, 3]
    ev = ClassificationEvaluator(num_classes=6, topk=5)
    ev.process({"target": np.array([0, 3, 5])}, np.zeros((3, 6)))
    m = ev.evaluate()
    assert m["top1"] == 1 / 3 and m["top5"] == 2 / 3  # hits: target 0 (top-1, top-5), target 3 (top-5 only)


def test_k_capped_at_num_classes():
    ev = ClassificationEvaluator(num_classes=3, topk=5)
    ev.process({"target": np.array([2, 2])}, np.array([[3.0, 2, 1], [1.0, 2, 0]]))  # targets ranked last
    m = ev.evaluate()
    assert m["top1"] == 0.0 and m["top5"] == 1.0  # top-5 of 3 classes = top-3: always a hit
    assert "top-1/top-3" in ev.protocol()


@pytest.mark.parametrize("k", [1, 5])
def test_agrees_with_sklearn(k):
    rng = np.random.default_rng(k)
    logits = rng.normal(size=(203, 10))
    targets = rng.integers(0, 10, 203)
    ev = ClassificationEvaluator(num_classes=10, topk=5)
    for start in range(0, 203, 64):  # uneven last batch
        ev.process({"target": targets[start:start + 64]}, logits[start:start + 64])
    m = ev.evaluate()
    expected = top_k_accuracy_score(targets, logits, k=k, labels=np.arange(10))
    assert m["top1" if k == 1 else "top5"] == pytest.approx(expected, abs=1e-15)
    assert 0 < expected < 1
