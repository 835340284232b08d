"""PASCAL VOC detection AP: hand-computed cases of the devkit's semantics, and the loop oracle of benchmarks/."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from cvtool.metrics.voc import Boxes, VOCEvaluator, average_precision, match_class, pairwise_voc_iou, voc_metrics

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from voc_loop import voc_loop_ap  # noqa: E402

G = (1, 1, 10, 10)  # a 10 x 10 VOC pixel box (area 100 under the +1 convention)
FAR = (50, 50, 60, 60)


def ap(gt: Boxes, dets: Boxes, names=("a",)) -> tuple:
    m = voc_metrics(gt, dets, list(names))
    return m["voc07"]["per_class_AP"]["a"], m["voc10"]["per_class_AP"]["a"]


def test_iou_plus_one_convention():
    a = np.array([G, G, G, G], float)
    b = np.array([(1, 1, 10, 5), (1, 1, 10, 4), (6, 1, 15, 10), (11, 1, 20, 10)], float)
    # 50/100, 40/100, inter 5*10=50 / union 150, touching edges do not overlap
    np.testing.assert_allclose(pairwise_voc_iou(a, b), [0.5, 0.4, 1 / 3, 0.0], rtol=0, atol=1e-15)


def test_iou_exactly_half_is_tp():
    gt = Boxes.make(0, 0, [G])
    assert ap(gt, Boxes.make(0, 0, [(1, 1, 10, 5)], scores=[1.0])) == (1.0, 1.0)  # IoU 50/100 = 0.5 -> TP
    assert ap(gt, Boxes.make(0, 0, [(1, 1, 10, 4)], scores=[1.0])) == (0.0, 0.0)  # IoU 0.4 -> FP


def test_tp_fp_tp_by_hand():
    gt = Boxes.make(0, 0, [G, FAR])
    dets = Boxes.make(0, 0, [FAR, (100, 100, 110, 110), G], scores=[0.7, 0.8, 0.9])
    tp, fp = match_class(gt, dets)
    assert tp.tolist() == [True, False, True] and fp.tolist() == [False, True, False]  # ranked 0.9, 0.8, 0.7
    # recall .5 .5 1, precision 1 .5 2/3; voc07: 6 points (t<=.5) at 1 + 5 at 2/3; voc10: .5*1 + .5*2/3
    assert ap(gt, dets) == pytest.approx((28 / 33, 5 / 6), abs=1e-15)
    assert average_precision(tp, fp, 2) == pytest.approx((28 / 33, 5 / 6), abs=1e-15)


def test_stable_sort_ties_keep_input_order():
    gt = Boxes.make(0, 0, [G])
    hit_first = Boxes.make(0, 0, [G, FAR], scores=[0.5, 0.5])
    miss_first = Boxes.make(0, 0, [FAR, G], scores=[0.5, 0.5])
    assert ap(gt, hit_first) == (1.0, 1.0)  # TP then FP: precision 1 at recall 1
    assert ap(gt, miss_first) == (0.5, 0.5)  # FP then TP: precision 1/2 at recall 1


def test_duplicate_is_fp_without_fallback():
    # two GT overlapping each other (IoU 90/100); both detections match A best (IoU 1) while B has IoU 0.9
    gt = Boxes.make(0, 0, [G, (1, 1, 10, 9)])
    dets = Boxes.make(0, 0, [G, G], scores=[0.9, 0.8])
    tp, fp = match_class(gt, dets)
    assert tp.tolist() == [True, False] and fp.tolist() == [False, True]
    # recall .5 .5, precision 1 .5: voc07 = 6 points (t<=.5) of 1 / 11; voc10 = .5 * 1
    assert ap(gt, dets) == pytest.approx((6 / 11, 0.5), abs=1e-15)


def test_difficult_ignored_and_not_counted():
    gt = Boxes.make(0, 0, [G, FAR], difficult=[True, False])
    # the first detection matches the difficult box (IoU 1): dropped, npos = 1
    dets = Boxes.make(0, 0, [G, FAR], scores=[0.9, 0.8])
    tp, fp = match_class(gt, dets)
    assert tp.tolist() == [True] and fp.tolist() == [False]
    assert ap(gt, dets) == (1.0, 1.0)  # one TP of one positive (as an FP it would give 0.5)
    # a detection that best-matches a difficult box (IoU 1) is dropped even if it overlaps a normal box >= 0.5
    gt2 = Boxes.make(0, 0, [(1, 1, 10, 9), G], difficult=[False, True])
    dets2 = Boxes.make(0, 0, [G, (1, 1, 10, 9)], scores=[0.9, 0.8])
    tp, fp = match_class(gt2, dets2)
    assert tp.tolist() == [True] and fp.tolist() == [False]  # the 2nd still finds the normal box untaken


def test_detection_on_other_image_or_class_is_fp():
    gt = Boxes.make(0, 0, [G])
    dets = Boxes.concat([Boxes.make(1, 0, [G], scores=[0.9]), Boxes.make(0, 1, [G], scores=[0.95]),
                         Boxes.make(0, 0, [G], scores=[0.8])])
    # class a: FP (image 1, no GT there) then TP: precision 0, 1/2 at recall 0, 1 -> both APs 0.5
    assert ap(gt, dets, ("a", "b")) == (0.5, 0.5)


@pytest.mark.parametrize("found", [3, 6, 7])
def test_voc07_recall_thresholds_exact(found):
    # 10 positives, `found` TPs at precision 1: recall found/10 must reach t = found/10 (0.1*7 > 0.7 in floats)
    boxes = [(1 + 20 * i, 1, 10 + 20 * i, 10) for i in range(10)]
    gt = Boxes.make(0, 0, boxes)
    dets = Boxes.make(0, 0, boxes[:found], scores=np.linspace(1, 0.5, found))
    # voc07: points t = 0 .. found/10 (found + 1 of 11) at 1; voc10: recall found/10 at precision 1
    assert ap(gt, dets) == pytest.approx(((found + 1) / 11, found / 10), abs=1e-15)


def test_map_skips_null_and_counts_zero():
    gt = Boxes.concat([Boxes.make(0, 0, [G]), Boxes.make(0, 1, [FAR]), Boxes.make(0, 2, [G], difficult=[True])])
    dets = Boxes.concat([Boxes.make(0, 0, [G], scores=[0.9]), Boxes.make(0, 2, [G], scores=[0.9])])
    m = voc_metrics(gt, dets, ["a", "b", "c"])
    for key in ("voc07", "voc10"):
        assert m[key]["per_class_AP"] == {"a": 1.0, "b": 0.0, "c": None}  # b: no detections; c: only difficult
        assert m[key]["mAP"] == 0.5  # (1 + 0) / 2, c left out


def random_case(rng: np.random.Generator, num_classes: int):
    n_images = int(rng.integers(1, 4))
    gt_rows, det_rows = [], []  # (image, label, box, difficult|score)
    for image in range(n_images):
        for _ in range(rng.integers(0, 5)):
            x, y = rng.integers(1, 15, size=2)
            w, h = rng.integers(2, 8, size=2)
            gt_rows.append((image, int(rng.integers(num_classes)), (x, y, x + w, y + h), bool(rng.random() < 0.3)))
    for _ in range(rng.integers(0, 10)):
        if gt_rows and rng.random() < 0.7:  # near a GT box (often a duplicate), sometimes another image/class
            image, label, box, _ = gt_rows[rng.integers(len(gt_rows))]
            box = tuple(int(v) for v in np.asarray(box) + rng.integers(-1, 2, size=4))
            box = (box[0], box[1], max(box[2], box[0]), max(box[3], box[1]))
            if rng.random() < 0.1:
                image = int(rng.integers(n_images))
        else:
            image, label = int(rng.integers(n_images)), int(rng.integers(num_classes))
            x, y = rng.integers(1, 15, size=2)
            box = (x, y, x + rng.integers(1, 8), y + rng.integers(1, 8))
        det_rows.append((image, label, box, float(rng.choice([0.2, 0.5, 0.5, 0.9]))))  # many ties
    return gt_rows, det_rows


def to_boxes(rows, flag: str) -> Boxes:
    if not rows:
        return Boxes.make(0, 0, np.zeros((0, 4)))
    image, label, box, value = zip(*rows)
    return Boxes.make(image, label, np.array(box, float), **{flag: list(value)})


def test_random_cases_match_loop_reference():
    rng = np.random.default_rng(0)
    names = ["a", "b"]
    for _ in range(120):
        gt_rows, det_rows = random_case(rng, len(names))
        m = voc_metrics(to_boxes(gt_rows, "difficult"), to_boxes(det_rows, "scores"), names)
        for label, name in enumerate(names):
            gt_dict = {}
            for image, lab, box, difficult in gt_rows:
                if lab == label:
                    gt_dict.setdefault(image, []).append((box, difficult))
            dets = [(image, score, box) for image, lab, box, score in det_rows if lab == label]
            for key, use_07 in (("voc07", True), ("voc10", False)):
                expected = voc_loop_ap(gt_dict, dets, use_07)
                got = m[key]["per_class_AP"][name]
                assert (got is None) == (expected is None), (gt_rows, det_rows)
                if expected is not None:
                    assert got == pytest.approx(expected, abs=1e-12), (key, name, gt_rows, det_rows)


def test_evaluator_converts_model_boxes():
    gt = Boxes.make(1, 0, [G])
    ev = VOCEvaluator(gt, ["a", "b"], ["c0"])
    # 0-based (0, 0, 10, 5) -> VOC (1, 1, 10, 5): IoU 50/100 = 0.5 -> TP (unconverted it would be 50/116)
    ev.process({"image_id": ["b"]}, [{"boxes": np.array([[0.0, 0.0, 10.0, 5.0]]), "scores": np.array([0.9]),
                                      "labels": np.array([0])}])
    assert ev.evaluate()["voc10"]["per_class_AP"]["c0"] == 1.0


def test_evaluator_process_matches_voc_metrics():
    rng = np.random.default_rng(1)
    ids, names = ["x", "y", "z"], ["a", "b", "c"]
    xy = rng.integers(1, 30, (12, 2))
    gt = Boxes.make(rng.integers(0, 3, 12), rng.integers(0, 3, 12), np.hstack([xy, xy + rng.integers(3, 10, (12, 2))]),
                    difficult=rng.random(12) < 0.2)
    ev = VOCEvaluator(gt, ids, names)
    outputs, manual = [], []
    for image in range(3):
        n = int(rng.integers(1, 6))
        boxes = np.concatenate([gt.box[:n] - [1, 1, 0, 0] + rng.normal(0, 1, (n, 4)), rng.uniform(0, 30, (2, 4))])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        out = {"boxes": boxes.astype(np.float32), "scores": rng.choice([0.3, 0.6], len(boxes)).astype(np.float32),
               "labels": rng.integers(0, 3, len(boxes))}
        outputs.append(out)
        voc_box = out["boxes"].astype(np.float64) + [1, 1, 0, 0]  # (x1 + 1, y1 + 1, x2, y2)
        manual.append(Boxes.make(image, out["labels"], voc_box, scores=out["scores"].astype(np.float64)))
    ev.process({"image_id": ids[:2]}, outputs[:2])
    ev.process({"image_id": ids[2:]}, outputs[2:])
    expected = voc_metrics(gt, Boxes.concat(manual), names)
    assert ev.evaluate() == expected
    assert expected["voc10"]["mAP"] > 0  # the case is not trivially empty


def test_nested_metrics_flatten_to_dotted_keys_for_best_checkpoint_selection():
    from cvtool.metrics.base import scalar_metrics

    gt = Boxes.make(0, 0, [G], difficult=[False])
    flat = scalar_metrics(voc_metrics(gt, Boxes.make(0, 0, [G], scores=[1.0]), ["a"]))
    assert flat == {"voc07.mAP": 1.0, "voc10.mAP": 1.0}  # per-class breakdowns are left out
