"""Detection error analysis: TIDE error types and dAP, the confusion matrix with background, P/R/F1 against the
score threshold, on hand-made cases; and `cvtool eval predictions=...` writing detection_analysis.json + pictures."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import only_run_dir, read_json

from cvtool.commands import evaluate
from cvtool.data.shapes import SHAPE_CLASSES, generate_devkit
from cvtool.data.voc_annotations import load_voc_objects
from cvtool.data.voc_results import write_result_files
from cvtool.errors import CvtoolError
from cvtool.metrics.box_matching import DetectionData, coco_detection_data, overlaps
from cvtool.metrics.detection_analysis import analyse, confusion_matrix
from cvtool.metrics.voc import Boxes, match_class, voc_metrics

SETTINGS = {"score_threshold": 0.5, "iou_threshold": 0.5, "tide_fg_iou": 0.5, "tide_bg_iou": 0.1}
A, B = 0, 1
BOX_A, BOX_B, BOX_C, BOX_D = [0, 0, 99, 99], [200, 0, 299, 99], [0, 200, 99, 299], [400, 0, 499, 99]


def voc_case(gt: list[tuple], dets: list[tuple]) -> DetectionData:
    """One image: gt (label, box, difficult), dets (label, box, score) in input order; classes a, b."""
    gt_boxes = Boxes.make(0, [g[0] for g in gt], [g[1] for g in gt], difficult=[g[2] for g in gt])
    det_boxes = Boxes.make(0, [d[0] for d in dets], [d[1] for d in dets], scores=[d[2] for d in dets])
    return DetectionData(gt_boxes, det_boxes, ["a", "b"], "voc")


@pytest.fixture
def six_errors() -> DetectionData:
    """Exactly one error of each TIDE type (and one true positive, one detection of a difficult box)."""
    return voc_case([(A, BOX_A, False), (B, BOX_B, False), (A, BOX_C, False), (A, BOX_D, True)],
                    [(A, BOX_A, 0.9),                  # true positive of A
                     (A, BOX_A, 0.8),                  # Dupe: A already matched
                     (A, BOX_B, 0.7),                  # Cls: IoU 1 with B of class b (fixes B)
                     (B, [200, 0, 239, 99], 0.6),      # Loc: IoU 0.4 with B (already targeted: removed by the fix)
                     (B, [0, 0, 29, 99], 0.5),         # Both: IoU 0.3 with A of the other class
                     (A, [600, 600, 649, 649], 0.4),   # Bkg
                     (A, BOX_D, 0.3)])                 # matches difficult D: ignored, no error; C is missed


def test_each_tide_error_type_is_counted_once_and_fixed_as_tide_does(six_errors):
    tide = analyse(six_errors, SETTINGS)["tide"]
    assert {name: e["count"] for name, e in tide["errors"].items()} == \
        {"Cls": 1, "Loc": 1, "Both": 1, "Dupe": 1, "Bkg": 1, "Miss": 1}
    assert tide["per_class"]["a"] == {"Cls": 1, "Loc": 0, "Both": 0, "Dupe": 1, "Bkg": 1, "Miss": 1}
    # base: a ranks TP, FP, FP, FP of 2 boxes -> 0.5; b has only FPs -> 0; the same as the VOC10 mAP
    assert tide["ap"] == 0.25 == voc_metrics(six_errors.gt, six_errors.dets, ["a", "b"])["voc10"]["mAP"]
    daps = {name: e["dAP"] for name, e in tide["errors"].items()}
    # Cls fix: the 0.7 detection becomes b's true positive (b: 1.0); Miss fix: a keeps 1 box (a: 1.0)
    assert daps == pytest.approx({"Cls": 0.5, "Loc": 0.0, "Both": 0.0, "Dupe": 0.0, "Bkg": 0.0, "Miss": 0.25})
    assert tide["special"] == pytest.approx({"FalsePos": 0.0, "FalseNeg": 0.25})


def test_loc_is_tested_before_cls_and_difficult_boxes_are_no_error_targets():
    data = voc_case([(A, BOX_A, False), (B, [0, 0, 199, 99], False), (B, BOX_D, True)],
                    [(A, [0, 0, 149, 99], 0.9),    # IoU 0.67 with A -> TP
                     (B, [0, 0, 99, 99], 0.8),     # IoU 1 with A (other class) and 0.5 with its own: TP of b
                     (A, [100, 0, 199, 99], 0.7),  # IoU 0.5 with b's (matched) box, 0 with A: Cls
                     (A, BOX_D, 0.6)])             # over a difficult b box only: background
    counts = {name: e["count"] for name, e in analyse(data, SETTINGS)["tide"]["errors"].items()}
    assert counts == {"Cls": 1, "Loc": 0, "Both": 0, "Dupe": 0, "Bkg": 1, "Miss": 0}
    loc_over_cls = voc_case([(A, [0, 0, 29, 99], False), (B, [0, 0, 99, 99], False)],
                            [(A, [0, 0, 99, 99], 0.9)])  # own class IoU 0.3 (in [t_b, t_f)), other class IoU 1
    errors = analyse(loc_over_cls, SETTINGS)["tide"]["errors"]
    assert (errors["Cls"]["count"], errors["Loc"]["count"], errors["Miss"]["count"]) == (0, 1, 1)  # b's box missed
    assert errors["Loc"]["dAP"] == pytest.approx(0.5)  # fixed: a's true positive (a: 0 -> 1), b stays at 0


def test_tide_thresholds_are_inclusive_and_an_image_without_boxes_holds_background_errors():
    gt = Boxes.make(0, [A, B, A], [BOX_A, BOX_B, BOX_C])
    dets = Boxes.make([0, 0, 0, 0, 1, 0], [A, A, B, B, A, A],
                      [BOX_A,            # true positive
                       [0, 0, 49, 99],   # IoU 0.5 = t_f with its matched box A: Loc (not Dupe); its fix removes it
                       [0, 0, 9, 99],    # IoU 0.1 = t_b with A (another class), 0 with the rest: Bkg (not Both)
                       [0, 0, 19, 99],   # IoU 0.2 with A only: Both
                       BOX_A,            # image 1 has no box: Bkg
                       BOX_C],           # true positive
                      scores=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    tide = analyse(DetectionData(gt, dets, ["a", "b"], "voc"), SETTINGS)["tide"]
    assert {name: e["count"] for name, e in tide["errors"].items()} == \
        {"Cls": 0, "Loc": 1, "Both": 1, "Dupe": 0, "Bkg": 2, "Miss": 1}
    # a ranks TP, FP, FP, TP of 2 boxes: 0.75; without the 0.8 (or the 0.5) detection 0.5 + 0.5 * 2 / 3; b: 0
    assert tide["ap"] == pytest.approx(0.375)
    assert (tide["errors"]["Loc"]["dAP"], tide["errors"]["Bkg"]["dAP"]) == pytest.approx((1 / 24, 1 / 24))


def test_pr_matching_at_another_iou_handles_an_image_with_detections_but_no_boxes():
    gt = Boxes.make(0, [A], [BOX_A])
    dets = Boxes.make([0, 1], [A, A], [BOX_A, BOX_A], scores=[0.9, 0.8])  # image 1 has no box
    result = analyse(DetectionData(gt, dets, ["a", "b"], "voc"), {**SETTINGS, "iou_threshold": 0.7})
    assert result["confusion"]["matrix"][0][0] == 1 and result["confusion"]["matrix"][2][0] == 1


def test_a_class_left_without_boxes_and_detections_leaves_the_mean_as_in_tidecv():
    data = voc_case([(A, BOX_A, False), (B, BOX_B, False)], [(A, BOX_A, 0.9)])
    tide = analyse(data, SETTINGS)["tide"]
    assert tide["ap"] == 0.5 and tide["errors"]["Miss"] == {"count": 1, "dAP": 0.5}
    assert tide["special"]["FalseNeg"] == 0.5


def test_removing_a_duplicate_ranked_above_a_true_positive_gains_one_sixth_ap():
    data = voc_case([(A, BOX_A, False), (A, BOX_B, False)],
                    [(A, BOX_A, 0.9), (A, BOX_A, 0.8), (A, BOX_B, 0.7)])  # TP, Dupe, TP
    tide = analyse(data, SETTINGS)["tide"]
    assert tide["ap"] == pytest.approx(0.5 + 0.5 * 2 / 3)  # recall 0.5 at precision 1, recall 1 at 2/3
    assert tide["errors"]["Dupe"] == {"count": 1, "dAP": pytest.approx(1 / 6)}
    assert tide["special"]["FalsePos"] == pytest.approx(1 / 6) and tide["errors"]["Bkg"]["dAP"] == 0.0


def test_confusion_matrix_counts_matches_misses_false_positives_and_skips_ignored_boxes():
    data = voc_case([(A, BOX_A, False), (B, BOX_B, False), (A, BOX_C, False), (B, BOX_D, True)],
                    [(B, BOX_A, 0.9),                 # takes A (tie with the next one: higher score first)
                     (A, BOX_A, 0.8),                 # A taken: a false positive
                     (B, BOX_B, 0.7),                 # b on B
                     (A, BOX_D, 0.6),                 # on the difficult box: not counted
                     (A, [700, 700, 749, 749], 0.55),  # false positive
                     (B, BOX_C, 0.4)])                # below the score threshold: C is missed
    images = overlaps(data)
    #                                a  b  background (columns: predictions)
    assert confusion_matrix(data, images, 0.5, 0.5).tolist() == [[0, 1, 1],   # a
                                                                 [0, 1, 0],   # b (difficult not counted)
                                                                 [2, 0, 0]]   # background
    assert confusion_matrix(data, images, 0.3, 0.5).tolist() == [[0, 2, 0], [0, 1, 0], [2, 0, 0]]
    assert confusion_matrix(data, images, 0.5, 1.0).tolist() == [[0, 1, 1], [0, 1, 0], [2, 0, 0]]


def test_precision_recall_f1_against_the_score_threshold():
    data = voc_case([(A, BOX_A, False), (A, BOX_C, False), (B, BOX_B, False), (A, BOX_D, True)],
                    [(A, BOX_A, 0.9), (A, BOX_D, 0.85), (A, [600, 0, 699, 99], 0.8), (B, BOX_B, 0.7),
                     (A, BOX_C, 0.6), (B, [600, 600, 699, 699], 0.5)])  # 0.85: ignored (difficult box)
    pr = analyse(data, SETTINGS)["pr_vs_score"]
    overall = pr["overall"]
    assert overall["thresholds"][75] == pytest.approx(0.75)
    assert (overall["precision"][75], overall["recall"][75], overall["f1"][75]) == pytest.approx((0.5, 1 / 3, 0.4))
    assert (overall["precision"][0], overall["recall"][0]) == pytest.approx((0.6, 1.0))
    assert (overall["precision"][95], overall["recall"][95], overall["f1"][95]) == (None, 0.0, None)
    assert overall["best"] == pytest.approx({"threshold": 0.6, "precision": 0.75, "recall": 1.0, "f1": 6 / 7})
    assert pr["per_class"]["a"]["best"] == pytest.approx({"threshold": 0.6, "precision": 2 / 3, "recall": 1.0,
                                                          "f1": 0.8})
    assert pr["per_class"]["b"]["best"] == pytest.approx({"threshold": 0.7, "precision": 1.0, "recall": 1.0,
                                                          "f1": 1.0})


def test_coco_crowd_regions_ignore_the_detections_inside_them():
    gt = {"images": [{"id": 7}], "categories": [{"id": 3, "name": "a"}],
          "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "bbox": [0, 0, 100, 100], "iscrowd": 0},
                          {"id": 2, "image_id": 7, "category_id": 3, "bbox": [200, 0, 300, 300], "iscrowd": 1}]}
    results = [{"image_id": 7, "category_id": 3, "score": 0.9, "bbox": [0, 0, 100, 100]},
               {"image_id": 7, "category_id": 3, "score": 0.8, "bbox": [210, 10, 50, 50]},  # in the crowd: IoU
               {"image_id": 7, "category_id": 3, "score": 0.7, "bbox": [210, 100, 50, 50]}]  # 0.03, covered 100 %
    analysis = analyse(coco_detection_data(gt, results), SETTINGS)
    assert analysis["tide"]["ap"] == 1.0 and sum(e["count"] for e in analysis["tide"]["errors"].values()) == 0
    assert analysis["confusion"]["matrix"] == [[1, 0], [0, 0]]


@pytest.fixture(scope="module")
def devkit_results(tmp_path_factory):
    devkit = generate_devkit(tmp_path_factory.mktemp("devkit") / "shapes", num_train=2, num_val=30, image_size=96)
    classes = list(SHAPE_CLASSES)
    gt = load_voc_objects(devkit, "val", classes)
    rng = np.random.default_rng(0)
    n = len(gt.label)
    labels = np.concatenate([np.where(rng.random(n) < 0.2, (gt.label + 1) % 5, gt.label), gt.label[: n // 3]])
    boxes = np.concatenate([gt.box + rng.normal(0, 3, gt.box.shape), gt.box[: n // 3] + 10])
    image = np.concatenate([gt.image, gt.image[: n // 3]])
    dets = Boxes.make(image, labels, boxes, scores=np.round(rng.random(len(labels)), 2))  # tied scores too
    results = tmp_path_factory.mktemp("results")
    write_result_files(results, "val", classes, gt.image_ids, dets.image, dets.label, dets.scores, dets.box)
    return devkit, results, Boxes.make(gt.image, gt.label, gt.box, difficult=gt.difficult), dets


def _run(devkit, results, tmp_path, *extra: str) -> dict:
    metrics, = evaluate.main(["task=detection", f"dataset.root={devkit}", "dataset.synth=null",
                              f"paths.runs={tmp_path / 'runs'}", f"predictions={results}", *extra])
    return metrics


def test_eval_of_stored_voc_results_writes_the_analysis_and_its_pictures(devkit_results, tmp_path):
    devkit, results, gt, dets = devkit_results
    metrics = _run(devkit, results, tmp_path)
    run = only_run_dir(tmp_path / "runs" / "detection" / "eval")
    analysis = read_json(run / "detection_analysis.json")
    assert "tide" not in metrics and analysis["tide"]["ap"] == pytest.approx(metrics["voc10"]["mAP"], abs=1e-12)
    matrix = np.array(analysis["confusion"]["matrix"])
    real = np.bincount(gt.label[~gt.difficult], minlength=5)
    assert matrix.shape == (6, 6) and matrix[:5].sum(axis=1).tolist() == real.tolist()  # each box once
    fp = sum(int(match_class(gt.of_class(k), dets.of_class(k))[1].sum()) for k in range(5))
    errors = analysis["tide"]["errors"]
    assert sum(errors[name]["count"] for name in ("Cls", "Loc", "Both", "Dupe", "Bkg")) == fp > 0  # typed once
    for name in ("detection_confusion.png", "pr_f1_vs_score.png", "tide_errors.png"):
        assert (run / "plots" / name).stat().st_size > 5_000
    json.dumps(analysis, allow_nan=False)  # strict JSON: undefined values are null


def test_analysis_settings_are_checked_and_can_be_turned_off(devkit_results, tmp_path):
    devkit, results, _, _ = devkit_results
    with pytest.raises(CvtoolError, match=r"analysis.iou_threshold=1.5 is not an IoU in \(0, 1\]"):
        _run(devkit, results, tmp_path, "analysis.iou_threshold=1.5")
    with pytest.raises(CvtoolError, match=r"analysis.tide_bg_iou=0.6 is not an IoU in \[0, tide_fg_iou=0.5\)"):
        _run(devkit, results, tmp_path, "analysis.tide_bg_iou=0.6")
    _run(devkit, results, tmp_path / "off", "analysis.enabled=false", "plots=false")
    assert not (only_run_dir(tmp_path / "off" / "runs" / "detection" / "eval") / "detection_analysis.json").exists()
