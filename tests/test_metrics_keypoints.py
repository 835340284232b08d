"""Keypoint metrics: OKS-AP by hand and equal to pycocotools' COCOeval, PCK by hand, keypoint results files checked,
`cvtool eval task=keypoints predictions=` without torch."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvtool.data.keypoint_results import load_keypoint_results
from cvtool.errors import CvtoolError
from cvtool.metrics.coco import KEYPOINT_STAT_NAMES
from cvtool.metrics.keypoints import KeypointEvaluator, keypoint_results, oks

NAMES = ["head", "left_hand", "right_hand"]
SIGMAS = [0.1, 0.1, 0.1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def category(cid: int = 1, name: str = "stick") -> dict:
    return {"id": cid, "name": name, "supercategory": "stick", "keypoints": list(NAMES), "skeleton": [[1, 2], [1, 3]]}


def ann(aid: int, image_id: int, box: list[float], points: list[tuple], iscrowd: int = 0, cid: int = 1) -> dict:
    flat = [float(v) for p in points for v in p]
    return {"id": aid, "image_id": image_id, "category_id": cid, "bbox": [float(v) for v in box],
            "area": float(box[2] * box[3]), "iscrowd": iscrowd, "keypoints": flat,
            "num_keypoints": sum(p[2] > 0 for p in points)}


def gt_dict(annotations: list[dict], images: int = 2, categories: list[dict] | None = None) -> dict:
    return {"images": [{"id": i, "file_name": f"{i}.png", "width": 100, "height": 100} for i in range(1, images + 1)],
            "categories": categories or [category()], "annotations": annotations}


def result(image_id: int, points: list[tuple], score: float, cid: int = 1) -> dict:
    return {"image_id": image_id, "category_id": cid, "keypoints": [float(v) for p in points for v in p],
            "score": score}


def evaluate(gt: dict, results: list[dict], threshold: float = 0.2, backend: str = "pycocotools") -> dict:
    evaluator = KeypointEvaluator(copy.deepcopy(gt), SIGMAS, threshold, NAMES, backend)
    evaluator.results = copy.deepcopy(results)
    return evaluator.evaluate()


# --- OKS-AP by hand -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("offset", "expected_ap"), [((6, 8), 0.7), ((3, 4), 0.9)])
def test_oks_ap_counts_the_thresholds_one_prediction_crosses(offset, expected_ap):
    """One 50x50 person (s^2 = 2500, sigma 0.1: e = d^2 / (2 * 2500 * 0.2^2) = d^2 / 200); head exact, left hand
    off by `offset`, right hand unlabelled (and predicted far away: OKS ignores it). (6, 8): d^2 = 100, OKS =
    (1 + e^-0.5) / 2 = 0.8033, a match at OKS thresholds .50 ... .80 (7 of 10); (3, 4): OKS = (1 + e^-0.125) / 2 =
    0.9412, a match at .50 ... .90 (9 of 10)."""
    gt = gt_dict([ann(1, 1, [0, 0, 50, 50], [(10, 10, 2), (20, 20, 2), (0, 0, 0)])], images=1)
    dx, dy = offset
    prediction = result(1, [(10, 10, 0.9), (20 + dx, 20 + dy, 0.9), (95, 95, 0.1)], 0.8)
    by_hand = (1 + math.exp(-(dx * dx + dy * dy) / 200)) / 2
    predicted = np.asarray(prediction["keypoints"]).reshape(1, 3, 3)
    assert oks(np.asarray(gt["annotations"][0]["keypoints"]).reshape(3, 3), 2500.0, predicted,
               np.asarray(SIGMAS)) == pytest.approx([by_hand], rel=1e-12)
    metrics = evaluate(gt, [prediction])["keypoints"]
    assert metrics["AP"] == pytest.approx(expected_ap) and metrics["AR"] == pytest.approx(expected_ap)
    assert metrics["AP50"] == pytest.approx(1.0) and metrics["AP75"] == pytest.approx(1.0)
    assert metrics["APm"] == pytest.approx(expected_ap)  # 2500 px^2 is COCO's medium range (32^2 ... 96^2)
    assert metrics["APl"] is None and metrics["ARl"] is None  # no large person: undefined, not 0
    assert metrics["per_category_AP"] == {"stick": pytest.approx(expected_ap)}


def test_oks_below_one_half_is_a_miss_and_no_results_score_zero():
    gt = gt_dict([ann(1, 1, [0, 0, 50, 50], [(10, 10, 2), (20, 20, 2), (0, 0, 0)])], images=1)
    far = result(1, [(30, 10, 1), (40, 20, 1), (0, 0, 0)], 0.9)  # d^2 = 400 each: OKS = e^-2 = 0.135
    assert evaluate(gt, [far])["keypoints"]["AP50"] == 0.0
    empty = evaluate(gt, [])
    assert empty["keypoints"]["AP"] == 0.0 and empty["keypoints"]["AR"] == 0.0
    assert empty["pck"]["per_keypoint"] == {"head": 0.0, "left_hand": 0.0, "right_hand": None}


# --- PCK by hand -------------------------------------------------------------------------------------------------
@pytest.fixture
def pck_case() -> tuple[dict, list[dict]]:
    """Image 1: person A (50x50 box: within 0.2 * 50 = 10 px) and person B (40x20 box: within 8 px); image 2:
    person C, predicted by no one, and a crowd region. No instance labels right_hand."""
    gt = gt_dict([ann(1, 1, [0, 0, 50, 50], [(10, 10, 2), (20, 20, 2), (0, 0, 0)]),
                  ann(2, 1, [50, 50, 40, 20], [(60, 60, 2), (80, 65, 1), (0, 0, 0)]),
                  ann(3, 2, [10, 10, 30, 30], [(20, 20, 2), (0, 0, 0), (0, 0, 0)]),
                  ann(4, 2, [0, 0, 100, 100], [(0, 0, 0)] * 3, iscrowd=1)])
    results = [result(1, [(60, 60, 1), (80, 65, 1), (5, 5, 1)], 0.9),   # exactly B: both points correct
               result(1, [(16, 18, 1), (30, 21, 1), (5, 5, 1)], 0.8),   # A: head at d = 10 (correct, <=),
               result(2, [(50, 50, 1), (50, 50, 1), (50, 50, 1)], 0.7, cid=2)]  # left hand at d = sqrt(101)
    return gt, results


def test_pck_by_hand(pck_case):
    gt, results = pck_case
    gt["categories"].append(category(2, "other"))
    pck = evaluate(gt, results)["pck"]
    # head: A and B correct, C unmatched (the prediction on image 2 is another category): 2/3; left_hand: 1/2
    assert pck["per_keypoint"] == {"head": pytest.approx(2 / 3), "left_hand": 0.5, "right_hand": None}
    assert pck["mean"] == pytest.approx((2 / 3 + 0.5) / 2) and pck["threshold"] == 0.2
    tighter = evaluate(gt, results, threshold=0.19)["pck"]  # A's head (10 px > 9.5 px) is now wrong
    assert tighter["per_keypoint"]["head"] == pytest.approx(1 / 3)


def test_pck_matches_the_highest_scored_prediction_first(pck_case):
    """As COCOeval matches: a confident prediction close to nobody still takes the person it overlaps most."""
    gt, results = pck_case
    gt["annotations"] = gt["annotations"][:1]  # A alone
    exact = result(1, [(10, 10, 1), (20, 20, 1), (0, 0, 0)], 0.5)
    wrong = result(1, [(30, 30, 1), (40, 40, 1), (0, 0, 0)], 0.9)
    assert evaluate(gt, [exact, wrong])["pck"]["mean"] == 0.0
    assert evaluate(gt, [exact, {**wrong, "score": 0.4}])["pck"]["mean"] == 1.0


# --- pycocotools agreement on generated data ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Random people (two categories, some joints unlabelled, some people with none, a crowd region) and noisy
    predictions of them (some missed, some relabelled, false positives)."""
    rng = np.random.default_rng(0)
    annotations, results = [], []
    for image_id in range(1, 13):
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(0, 60, 2)
            w, h = rng.uniform(15, 40, 2)
            v = rng.choice([0, 1, 2], size=3, p=[0.2, 0.3, 0.5]) * (rng.random() > 0.1)
            xy = np.stack([rng.uniform(x, x + w, 3), rng.uniform(y, y + h, 3)], 1)
            points = [(float(p[0]), float(p[1]), int(vis)) if vis else (0, 0, 0) for p, vis in zip(xy, v)]
            cid = int(rng.choice([1, 2]))
            annotations.append(ann(len(annotations) + 1, image_id, [x, y, w, h], points, cid=cid))
            if rng.random() < 0.85:
                noisy = xy + rng.normal(0, 0.08 * max(w, h), xy.shape)
                results.append(result(image_id, [(px, py, float(rng.random())) for px, py in noisy],
                                      float(rng.random()), cid if rng.random() < 0.9 else 3 - cid))
        if rng.random() < 0.5:
            fp = rng.uniform(0, 100, (3, 2))
            results.append(result(image_id, [(px, py, 0.5) for px, py in fp], float(rng.random()), 1))
    annotations.append(ann(len(annotations) + 1, 1, [60, 60, 30, 30], [(0, 0, 0)] * 3, iscrowd=1))
    path = tmp_path_factory.mktemp("kp") / "person_keypoints_val.json"
    path.write_text(json.dumps(gt_dict(annotations, images=12, categories=[category(1, "stick"),
                                                                            category(2, "doll")])))
    return path, results


def reference(path: Path, results: list[dict]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(results)), "keypoints")
        ev.params.kpt_oks_sigmas = np.array(SIGMAS)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def test_oks_ap_equals_pycocotools_cocoeval(generated):
    path, results = generated
    ev = reference(path, results)
    metrics = evaluate(json.loads(path.read_text()), results)["keypoints"]
    assert [metrics[k] for k in KEYPOINT_STAT_NAMES] == [float(v) if v > -1 else None for v in ev.stats]
    precision = ev.eval["precision"]
    for k, name in enumerate(["stick", "doll"]):
        assert metrics["per_category_AP"][name] == pytest.approx(precision[:, :, k, 0, 0][precision[:, :, k, 0, 0]
                                                                                           > -1].mean(), abs=0)
    assert 0.2 < metrics["AP"] < 0.95  # the data exercise matching, not a trivial 0 or 1


def test_faster_coco_eval_gives_the_same_keypoint_numbers(generated):
    pytest.importorskip("faster_coco_eval")
    path, results = generated
    gt = json.loads(path.read_text())
    slow, fast = evaluate(gt, results), evaluate(gt, results, backend="faster_coco_eval")
    assert fast["pck"] == slow["pck"]
    for key in KEYPOINT_STAT_NAMES:
        assert fast["keypoints"][key] == pytest.approx(slow["keypoints"][key], abs=1e-12)


def test_process_turns_model_outputs_into_coco_results(generated):
    path, results = generated
    gt = json.loads(path.read_text())
    evaluator = KeypointEvaluator(gt, SIGMAS, 0.2, NAMES)
    for r in results:  # one output per image, as a model gives them: 0-based labels over categories sorted by id
        evaluator.process({"image_id": [r["image_id"]]},
                          [{"keypoints": np.asarray(r["keypoints"]).reshape(1, 3, 3), "scores": np.array([r["score"]]),
                            "labels": np.array([r["category_id"] - 1])}])
    assert evaluator.results == results
    assert evaluator.evaluate() == evaluate(gt, results)
    assert keypoint_results(7, {"keypoints": np.zeros((0, 3, 3)), "scores": np.zeros(0), "labels": np.zeros(0)},
                            [1, 2]) == []


def test_sigmas_of_another_length_than_k_are_refused():
    gt = gt_dict([ann(1, 1, [0, 0, 50, 50], [(10, 10, 2), (20, 20, 2), (0, 0, 0)])], images=1)
    with pytest.raises(CvtoolError, match=r"categories\[0\] \('stick'\) has 3 keypoints but dataset.sigmas has 2"):
        KeypointEvaluator(gt, [0.1, 0.1], 0.2, NAMES)


# --- results files ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("entry", "message"), [
    (result(1, [(1, 1, 1), (2, 2, 1)], 0.5) | {"keypoints": [1.0] * 8},
     r"keypoints has 8 numbers but category_id 1 has 3 keypoints \(9 numbers.*\[1\]\)"),
    (result(9, [(1, 1, 1)] * 3, 0.5), r"image_id 9 is not an image of the ground truth \(.*results.json \[1\]\)"),
    (result(1, [(1, 1, 1)] * 3, 0.5, cid=5), r"category_id 5 is not a category .*\[1\]"),
    (result(1, [(1, 1, 1)] * 3, float("nan")), r"score nan is not a finite number .*\[1\]"),
    (result(1, [(1, float("inf"), 1)] + [(1, 1, 1)] * 2, 0.5), r"keypoints\[1\] is inf, not a finite number .*\[1\]"),
])
def test_bad_keypoint_results_name_the_file_and_index(tmp_path, entry, message):
    gt = gt_dict([], images=1)
    path = tmp_path / "results.json"
    path.write_text(json.dumps([result(1, [(1, 1, 1)] * 3, 0.5), entry]))
    with pytest.raises(CvtoolError, match=message):
        load_keypoint_results(path, gt)


def test_keypoint_results_must_be_a_list(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"annotations": []}))
    with pytest.raises(CvtoolError, match=r"results JSON is a dict, not a list \(.*results.json\)"):
        load_keypoint_results(path, gt_dict([]))


# --- cvtool eval predictions= ------------------------------------------------------------------------------------
def stored_args(gt_file: Path, results_file: Path, tmp_path: Path, sigmas: list[float] = SIGMAS) -> list[str]:
    return ["task=keypoints", "dataset=coco_keypoints", f"dataset.ann_file={gt_file}",
            f"dataset.sigmas=[{','.join(map(str, sigmas))}]", f"predictions={results_file}", f"paths.runs={tmp_path}"]


def test_stored_keypoint_results_evaluate_without_torch(generated, tmp_path):
    path, results = generated
    results_file = tmp_path / "results.json"
    results_file.write_text(json.dumps(results))
    poison = tmp_path / "poison"
    for name in ("torch", "torchvision"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(f"raise ImportError('{name} imported by a stored evaluation')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison), str(Path.cwd())])}
    out = tmp_path / "metrics.json"
    done = subprocess.run([sys.executable, "-m", "cvtool", "eval", *stored_args(path, results_file, tmp_path),
                           f"json={out}"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(out.read_text()) == evaluate(json.loads(path.read_text()), results)


def test_stored_evaluation_refuses_bad_input_with_one_line(generated, tmp_path):
    from cvtool.commands import evaluate as evaluate_command

    path, results = generated
    short, good = tmp_path / "short.json", tmp_path / "results.json"
    short.write_text(json.dumps([*results[:2], {**results[2], "keypoints": results[2]["keypoints"][:-1]}]))
    good.write_text(json.dumps(results))
    with pytest.raises(CvtoolError, match=r"keypoints has 8 numbers .*short.json \[2\]"):
        evaluate_command.main(stored_args(path, short, tmp_path))
    with pytest.raises(CvtoolError, match=r"has 3 keypoints but dataset.sigmas has 4 values \(dataset.sigmas\)"):
        evaluate_command.main(stored_args(path, good, tmp_path, sigmas=[0.1] * 4))
