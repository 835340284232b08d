"""`cvtool eval predictions=...`: stored VOC/COCO/segmentation/classification predictions, end to end."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import only_run_dir, read_json

from cvtool.commands import evaluate
from cvtool.data.index_png import read_index_png, write_index_png
from cvtool.data.shapes import SHAPE_CLASSES, generate_devkit
from cvtool.data.voc_annotations import load_voc_objects
from cvtool.data.voc_results import write_result_files
from cvtool.errors import CvtoolError
from cvtool.metrics.coco import STAT_NAMES
from cvtool.metrics.voc import Boxes, voc_metrics

CLASSES = list(SHAPE_CLASSES)


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return generate_devkit(tmp_path_factory.mktemp("devkit") / "shapes", num_train=2, num_val=40, image_size=96)


@pytest.fixture(scope="module")
def stored(devkit, tmp_path_factory) -> dict:
    """Noisy predictions of every kind, written in the formats users bring."""
    out = tmp_path_factory.mktemp("stored")
    rng = np.random.default_rng(0)
    gt = load_voc_objects(devkit, "val", CLASSES)
    n = len(gt.label)
    dets = Boxes.make(np.concatenate([gt.image, gt.image[: n // 2]]),
                      np.concatenate([np.where(rng.random(n) < 0.1, (gt.label + 1) % 5, gt.label), gt.label[: n // 2]]),
                      np.concatenate([gt.box + rng.normal(0, 2, gt.box.shape), gt.box[: n // 2] + 6]),
                      scores=np.round(rng.random(n + n // 2), 2))  # rounded: tied scores
    write_result_files(out / "voc", "val", CLASSES, gt.image_ids, dets.image, dets.label, dets.scores, dets.box)
    coco_gt = json.loads((devkit / "annotations" / "instances_val.json").read_text())
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "score": float(rng.random()),
                "bbox": [v + float(rng.normal(0, 1.5)) for v in a["bbox"]], "segmentation": a["segmentation"]}
               for a in coco_gt["annotations"]]
    (out / "results.json").write_text(json.dumps(results))
    (out / "seg").mkdir()
    for image_id in gt.image_ids:
        mask = read_index_png(devkit / "SegmentationClass" / f"{image_id}.png").copy()
        mask[mask == 255] = 0
        mask[rng.random(mask.shape) < 0.03] = 2
        write_index_png(out / "seg" / f"{image_id}.png", mask)
    logits = rng.normal(size=(300, 7)).astype(np.float32)
    targets = rng.integers(0, 7, 300)
    logits[np.arange(300), targets] += 1.0
    np.save(out / "logits.npy", logits)
    np.save(out / "targets.npy", targets)
    return {"dir": out, "gt": Boxes.make(gt.image, gt.label, gt.box, difficult=gt.difficult), "dets": dets,
            "results": results, "logits": logits, "targets": targets}


def common(devkit: Path, tmp_path: Path) -> list[str]:
    return [f"dataset.root={devkit}", "dataset.synth=null", f"paths.runs={tmp_path / 'runs'}"]


def test_voc_results_directory_gives_the_metrics_of_the_detections_it_holds(devkit, stored, tmp_path):
    out = tmp_path / "out.json"
    metrics, = evaluate.main(["task=detection", *common(devkit, tmp_path), f"predictions={stored['dir'] / 'voc'}",
                              f"json={out}"])
    assert metrics == voc_metrics(stored["gt"], stored["dets"], CLASSES)  # files round-trip exactly
    assert read_json(out) == metrics == read_json(only_run_dir(tmp_path / "runs" / "detection" / "eval") /
                                                  "metrics.json")
    assert set(metrics) == {"voc07", "voc10"} and 0 < metrics["voc10"]["mAP"] < 1
    assert (only_run_dir(tmp_path / "runs" / "detection" / "eval") / "plots" / "pr_curves.png").stat().st_size > 5000
    assert set(metrics["voc07"]["per_class_AP"]) == set(CLASSES)


def test_coco_results_equal_pycocotools_stats(devkit, stored, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ann = devkit / "annotations" / "instances_val.json"
    metrics, = evaluate.main(["task=detection", "dataset=coco", f"dataset.ann_file={ann}",
                              f"predictions={stored['dir'] / 'results.json'}", f"paths.runs={tmp_path}"])
    assert set(metrics) == {"bbox", "segm"}
    for iou_type, drop in (("bbox", "segmentation"), ("segm", "bbox")):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(str(ann))
            results = [{k: v for k, v in r.items() if k != drop} for r in copy.deepcopy(stored["results"])]
            reference = COCOeval(gt, gt.loadRes(results), iou_type)
            reference.evaluate()
            reference.accumulate()
            reference.summarize()
        assert [metrics[iou_type][name] for name in STAT_NAMES] == [v if v > -1 else None for v in reference.stats]
    fast, = evaluate.main(["task=detection", "dataset=coco", f"dataset.ann_file={ann}", "backend=faster_coco_eval",
                           "iou_type=bbox", f"predictions={stored['dir'] / 'results.json'}", f"paths.runs={tmp_path}"])
    assert list(fast) == ["bbox"]
    assert fast["bbox"].pop("per_category_AP") == pytest.approx(metrics["bbox"].pop("per_category_AP"), abs=1e-12)
    assert fast["bbox"] == pytest.approx(metrics["bbox"], abs=1e-12)


def test_segmentation_pngs_are_scored_by_one_confusion_matrix(devkit, stored, tmp_path):
    metrics, = evaluate.main(["task=segmentation", *common(devkit, tmp_path), f"predictions={stored['dir'] / 'seg'}"])
    confusion = np.zeros((6, 6), dtype=np.int64)
    for png in sorted((devkit / "SegmentationClass").glob("*.png")):
        if (stored["dir"] / "seg" / png.name).exists():
            gt, pred = read_index_png(png).ravel().astype(int), read_index_png(stored["dir"] / "seg" / png.name).ravel()
            keep = gt != 255
            np.add.at(confusion, (gt[keep], pred[keep]), 1)
    iou = np.diag(confusion) / (confusion.sum(0) + confusion.sum(1) - np.diag(confusion))
    assert metrics["per_class_iou"] == pytest.approx(iou.tolist(), abs=1e-15)
    assert metrics["mIoU"] == pytest.approx(iou.mean(), abs=1e-15)
    assert metrics["pixel_acc"] == pytest.approx(np.trace(confusion) / confusion.sum(), abs=1e-15)
    run = only_run_dir(tmp_path / "runs" / "segmentation" / "eval")
    assert (run / "plots" / "confusion_matrix.png").stat().st_size > 5_000


def test_classification_logits_npy_and_csv_give_the_same_numbers(stored, tmp_path):
    d = stored["dir"]
    metrics, = evaluate.main([f"predictions={d / 'logits.npy'}", f"targets={d / 'targets.npy'}",
                              f"paths.runs={tmp_path}"])
    logits, targets = stored["logits"], stored["targets"]
    assert metrics["top1"] == np.mean(logits.argmax(1) == targets)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert metrics["top5"] == np.mean((top5 == targets[:, None]).any(1)) and metrics["num_samples"] == 300
    rows = ["index,target," + ",".join(f"logit_{k}" for k in range(7))]
    order = np.random.default_rng(1).permutation(300)  # any row order: the index column restores it
    rows += [f"{i},{targets[i]}," + ",".join(map(repr, logits[i].tolist())) for i in order]
    (tmp_path / "preds.csv").write_text("\n".join(rows) + "\n")
    from_csv, = evaluate.main([f"predictions={tmp_path / 'preds.csv'}", f"paths.runs={tmp_path}"])
    assert from_csv == metrics


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cvtool", "eval", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_stored_evaluation_never_imports_torch(devkit, stored, tmp_path):
    poison = tmp_path / "poison"
    for name in ("torch", "torchvision"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(f"raise ImportError('{name} imported by a stored evaluation')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison), str(Path.cwd())])}
    d = stored["dir"]
    for args in (["task=detection", *common(devkit, tmp_path), f"predictions={d / 'voc'}"],
                 ["task=detection", "dataset=coco", f"dataset.ann_file={devkit / 'annotations/instances_val.json'}",
                  f"predictions={d / 'results.json'}", f"paths.runs={tmp_path}"],
                 ["task=segmentation", *common(devkit, tmp_path), f"predictions={d / 'seg'}"],
                 [f"predictions={d / 'logits.npy'}", f"targets={d / 'targets.npy'}", f"paths.runs={tmp_path}"]):
        done = _cli(*args, env=env)
        assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def broken(devkit, stored, tmp_path) -> tuple[Path, Path]:
    """Writable copies of the devkit and of the VOC results, to break one file at a time."""
    root, results = tmp_path / "devkit", tmp_path / "voc"
    shutil.copytree(devkit, root, ignore=shutil.ignore_patterns("JPEGImages", "SegmentationObject"))
    shutil.copytree(stored["dir"] / "voc", results)
    return root, results


def _voc_error(root: Path, results: Path, tmp_path: Path) -> str:
    with pytest.raises(CvtoolError) as err:
        evaluate.main(["task=detection", *common(root, tmp_path), f"predictions={results}"])
    return err.value.line()


def test_malformed_voc_inputs_name_the_file_and_line(broken, tmp_path):
    root, results = broken
    first = (root / "ImageSets" / "Main" / "val.txt").read_text().split()[0]
    xml = root / "Annotations" / f"{first}.xml"
    good_xml = xml.read_text()
    xml.write_text(good_xml.replace("</annotation>", ""))
    assert f"{xml}:" in _voc_error(root, results, tmp_path) and "malformed XML" in _voc_error(root, results, tmp_path)
    xml.write_text(good_xml.replace("<name>", "<name>x", 1))
    message = _voc_error(root, results, tmp_path)
    assert "unknown class name 'x" in message and f"{xml} object #1" in message
    xml.write_text(good_xml)
    circle = results / "comp4_det_val_circle.txt"
    lines = circle.read_text().splitlines()
    circle.write_text("\n".join([lines[0], " ".join(lines[1].split()[:5]), *lines[2:]]) + "\n")
    assert f"{circle}:2" in (message := _voc_error(root, results, tmp_path)) and "5 fields instead of 6" in message
    circle.write_text("\n".join([lines[0], "nosuchimage " + " ".join(lines[1].split()[1:]), *lines[2:]]) + "\n")
    assert f"{circle}:2" in (message := _voc_error(root, results, tmp_path)) and "'nosuchimage'" in message
    circle.write_text("\n".join(lines) + "\n")
    (results / "comp4_det_val_hexagon.txt").write_text("")
    assert "unknown class 'hexagon'" in _voc_error(root, results, tmp_path)


def test_malformed_coco_and_segmentation_inputs_name_the_file(devkit, stored, tmp_path):
    ann = devkit / "annotations" / "instances_val.json"
    coco = ["task=detection", "dataset=coco", f"dataset.ann_file={ann}", f"paths.runs={tmp_path}"]
    bad = tmp_path / "results.json"
    for content, expected in ((json.dumps({"image_id": 1}), "not a list"), ("[{", f"{bad}:1"),
                              (json.dumps([{**stored["results"][0], "image_id": 10**9}]), f"{bad} [0]"),
                              (json.dumps([{**stored["results"][0], "category_id": 2}]), "category_id 2")):
        bad.write_text(content)
        with pytest.raises(CvtoolError, match=expected.replace("[", r"\[")):
            evaluate.main([*coco, f"predictions={bad}"])
    seg = tmp_path / "seg"
    shutil.copytree(stored["dir"] / "seg", seg)
    victim = sorted(seg.glob("*.png"))[3]
    write_index_png(victim, np.zeros((10, 12), np.uint8))
    with pytest.raises(CvtoolError, match="12x10 but its ground truth") as err:
        evaluate.main(["task=segmentation", *common(devkit, tmp_path), f"predictions={seg}"])
    assert str(victim) in err.value.line()
    victim.unlink()
    with pytest.raises(CvtoolError, match="prediction missing"):
        evaluate.main(["task=segmentation", *common(devkit, tmp_path), f"predictions={seg}"])


def test_cli_errors_are_one_line_with_exit_code_2(devkit, stored, tmp_path):
    results = tmp_path / "voc"
    shutil.copytree(stored["dir"] / "voc", results)
    circle = results / "comp4_det_val_circle.txt"
    circle.write_text("000001 0.5 1 2 3\n")
    done = _cli("task=detection", *common(devkit, tmp_path), f"predictions={stored['dir'] / 'voc'}")
    assert done.returncode == 0 and "protocol: VOC2007 11-point and VOC2010+ area AP, IoU ≥ 0.5 with +1 pixel " \
                                    "convention, difficult ignored" in done.stdout
    done = _cli("task=detection", *common(devkit, tmp_path), f"predictions={results}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: 5 fields instead of 6 ({circle}:1)")
    done = _cli(f"paths.runs={tmp_path}")
    assert done.returncode == 2 and "pass ckpt=PATH" in done.stderr
    done = _cli(f"predictions={stored['dir'] / 'logits.npy'}", f"paths.runs={tmp_path}")
    assert done.returncode == 2 and "targets=PATH.npy" in done.stderr
    done = _cli("task=detection", "dataset=coco", f"predictions={stored['dir'] / 'results.json'}",
                f"paths.runs={tmp_path}")  # neither dataset.ann_file nor dataset.root
    assert done.returncode == 2 and "error: config key 'dataset.root' needs a value" in done.stderr
