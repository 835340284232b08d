"""COCO metrics: equal to pycocotools' own COCOeval, faster-coco-eval within 1e-12, crowd regions ignored."""

from __future__ import annotations

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cvtool.data.shapes import generate_devkit
from cvtool.errors import CvtoolError
from cvtool.metrics.coco import STAT_NAMES, CocoEvaluator, check_iou_types, coco_api, coco_metrics, model_results

SIZE = 96
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


@pytest.fixture(scope="module")
def gt_file(tmp_path_factory):
    """The generated val instances plus one crowd annotation, written back as a file for pycocotools."""
    root = generate_devkit(tmp_path_factory.mktemp("devkit"), num_train=2, num_val=30, image_size=SIZE)
    dataset = json.loads((root / "annotations" / "instances_val.json").read_text())
    crowd = np.zeros((SIZE, SIZE), bool)
    crowd[60:90, 60:90] = True
    image_id = dataset["images"][0]["id"]
    dataset["annotations"].append({"id": 10_000, "image_id": image_id, "category_id": 3, "iscrowd": 1,
                                   "bbox": [60.0, 60.0, 30.0, 30.0], "area": 900, "segmentation": rle(crowd)})
    path = tmp_path_factory.mktemp("gt") / "instances_val_crowd.json"
    path.write_text(json.dumps(dataset))
    return path


@pytest.fixture(scope="module")
def results(gt_file) -> list[dict]:
    """Noisy detections carrying both bbox and segmentation: shifted/jittered copies of GT (some dropped, some
    relabelled), false positives, and a detection on the crowd region."""
    dataset = json.loads(gt_file.read_text())
    rng = np.random.default_rng(0)
    out = []
    for ann in dataset["annotations"]:
        if ann["iscrowd"] or rng.random() < 0.15:
            continue
        mask = np.roll(mask_utils.decode(ann["segmentation"]), tuple(rng.integers(-3, 4, size=2)), axis=(0, 1))
        box = (np.array(ann["bbox"]) + rng.normal(0, 2, 4)).clip(0.5).tolist()
        category = ann["category_id"] if rng.random() < 0.85 else int(rng.choice([1, 3, 5, 7, 9]))
        out.append({"image_id": ann["image_id"], "category_id": category, "score": float(rng.random()),
                    "bbox": box, "segmentation": rle(mask)})
    for image in dataset["images"][:10]:  # false positives
        mask = np.zeros((SIZE, SIZE), bool)
        x, y = rng.integers(0, 70, size=2)
        mask[y:y + 20, x:x + 20] = True
        out.append({"image_id": image["id"], "category_id": int(rng.choice([1, 3, 5, 7, 9])),
                    "score": float(rng.random()), "bbox": [float(x), float(y), 20.0, 20.0], "segmentation": rle(mask)})
    crowd_mask = np.zeros((SIZE, SIZE), bool)
    crowd_mask[65:85, 65:85] = True
    out.append({"image_id": dataset["images"][0]["id"], "category_id": 3, "score": 0.99,
                "bbox": [65.0, 65.0, 20.0, 20.0], "segmentation": rle(crowd_mask)})
    return out


def reference(gt_file, results: list[dict], iou_type: str) -> COCOeval:
    drop = "segmentation" if iou_type == "bbox" else "bbox"
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes([{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(results)])
        ev = COCOeval(gt, dt, iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def ours(gt_file, results, iou_types, backend="pycocotools") -> dict:
    return coco_metrics(coco_api(json.loads(gt_file.read_text()), backend), copy.deepcopy(results), iou_types, backend)


def test_equals_pycocotools(gt_file, results):
    metrics = ours(gt_file, results, ["bbox", "segm"])
    for iou_type in ("bbox", "segm"):
        ev = reference(gt_file, results, iou_type)
        expected = {n: (float(v) if v > -1 else None) for n, v in zip(STAT_NAMES, ev.stats)}
        assert {n: metrics[iou_type][n] for n in STAT_NAMES} == expected
        assert 0.2 < expected["AP"] < 0.9 and expected["APl"] is None  # noisy, not degenerate; no large objects
        precision = ev.eval["precision"]
        names = {c["id"]: c["name"] for c in ev.cocoGt.dataset["categories"]}
        for k, cat in enumerate(ev.params.catIds):
            values = precision[:, :, k, 0, -1]
            assert metrics[iou_type]["per_category_AP"][names[cat]] == float(values[values > -1].mean())


def test_faster_coco_eval_agrees(gt_file, results):
    slow = ours(gt_file, results, ["bbox", "segm"])
    fast = ours(gt_file, results, ["bbox", "segm"], backend="faster_coco_eval")
    for iou_type in ("bbox", "segm"):
        for name in STAT_NAMES:
            a, b = slow[iou_type][name], fast[iou_type][name]
            assert (a is None and b is None) or abs(a - b) <= 1e-12, (iou_type, name, a, b)
        for name, a in slow[iou_type]["per_category_AP"].items():
            assert abs(a - fast[iou_type]["per_category_AP"][name]) <= 1e-12


def test_empty_results_give_zero(gt_file):
    for backend in ("pycocotools", "faster_coco_eval"):
        metrics = ours(gt_file, [], ["bbox", "segm"], backend)
        for iou_type in ("bbox", "segm"):
            assert metrics[iou_type]["AP"] == 0.0 and metrics[iou_type]["AR100"] == 0.0
            assert set(metrics[iou_type]["per_category_AP"].values()) == {0.0}


def tiny_gt() -> dict:
    """One image: a normal 20x20 box (small) and a 30x30 crowd region of category a; category b has no GT."""
    return {"images": [{"id": 7, "width": 100, "height": 100}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [
                {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0},
                {"id": 2, "image_id": 7, "category_id": 1, "bbox": [50, 50, 30, 30], "area": 900, "iscrowd": 1}]}


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_crowd_detection_ignored_by_hand(backend):
    results = [{"image_id": 7, "category_id": 1, "score": 0.9, "bbox": [10, 10, 20, 20]},
               {"image_id": 7, "category_id": 1, "score": 0.95, "bbox": [55, 55, 10, 10]},  # inside the crowd
               {"image_id": 7, "category_id": 2, "score": 0.99, "bbox": [10, 10, 20, 20]}]  # b: no GT, undefined
    m = coco_metrics(coco_api(tiny_gt(), backend), results, ["bbox"], backend)["bbox"]
    # the 0.95 detection is matched to the crowd region and ignored, so precision is 1 at recall 1 -> AP 1
    # (counted as FP it would be 0.5); COCOeval's precision is tp / (tp + fp + eps) = 1 - 2.2e-16, hence approx
    one = pytest.approx(1.0, abs=1e-12)
    assert (m["AP"], m["AP50"], m["AP75"], m["APs"], m["per_category_AP"]["a"]) == (one, one, one, one, one)
    # recall is exact: maxDets=1 keeps only the (ignored) crowd detection -> 0; with 10 both -> 1/1
    assert m["AR1"] == 0.0 and m["AR10"] == 1.0 and m["AR100"] == 1.0
    assert m["APm"] is None and m["APl"] is None and m["ARm"] is None  # no medium/large GT: -1 -> None
    assert m["per_category_AP"]["b"] is None  # no GT of b: precision -1 everywhere, left out of AP


def test_check_iou_types():
    both = [{"bbox": [0, 0, 1, 1], "segmentation": {}}]
    assert check_iou_types(both, None, "f") == ["bbox", "segm"]
    assert check_iou_types([{"bbox": [0, 0, 1, 1]}], None, "f") == ["bbox"]
    assert check_iou_types([], None, "f") == ["bbox"]
    assert check_iou_types(both, "segm", "f") == ["segm"]
    with pytest.raises(CvtoolError, match="mix"):
        check_iou_types([{"bbox": [0, 0, 1, 1]}, {"segmentation": {}}], None, "f")
    with pytest.raises(CvtoolError, match=r"f \[1\]"):
        check_iou_types([both[0], {"bbox": [0, 0, 1, 1]}], "segm", "f")
    with pytest.raises(CvtoolError, match="unknown iou_type"):
        check_iou_types(both, "keypoints", "f")


def test_model_results_and_evaluator():
    masks = np.zeros((1, 1, 100, 100))
    masks[0, 0, 10:30, 10:30] = 0.8  # > 0.5 inside the box
    masks[0, 0, 40, 40] = 0.5  # not above the threshold
    output = {"boxes": np.array([[10.0, 10.0, 30.0, 30.0]]), "scores": np.array([0.7]), "labels": np.array([0]),
              "masks": masks}
    (res,) = model_results(7, output, [1])
    assert res["bbox"] == [10.0, 10.0, 20.0, 20.0] and res["category_id"] == 1 and res["score"] == 0.7  # xyxy->xywh
    decoded = mask_utils.decode({"size": res["segmentation"]["size"], "counts": res["segmentation"]["counts"]})
    assert decoded.sum() == 400 and decoded[10:30, 10:30].all()
    ev = CocoEvaluator(coco_api(tiny_gt()), [1, 2], ["bbox"])
    ev.process({"image_id": [7]}, [output])
    m = ev.evaluate()["bbox"]
    assert m["AP"] == pytest.approx(1.0, abs=1e-12) and m["AR1"] == 1.0  # the detection equals the normal GT box
