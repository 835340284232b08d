"""The R-CNN lineage end to end: `cvtool data proposals`, proposals carried through the dataset's transforms, and
fast_rcnn / rcnn / overfeat trained, evaluated, predicted, visualized and exported through the CLI."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import only_run_dir, read_json, without_torch
from test_detection import SMALL, small
from torchvision.transforms import v2
from typer.testing import CliRunner

from cvtool.cli.app import app
from cvtool.commands import evaluate, export, predict, train, visualize
from cvtool.commands import proposals as proposals_command
from cvtool.data.detection_sets import DetectionItem, DetectionSet, open_detection_set, with_sanitizing
from cvtool.data.proposal_files import read_proposals
from cvtool.data.shapes import SHAPE_CLASSES, generate_devkit
from cvtool.engine.checkpoint import load_checkpoint, model_weights


@pytest.fixture(scope="module")
def devkit(tmp_path_factory):
    return generate_devkit(tmp_path_factory.mktemp("lineage") / "devkit", **SMALL)


def test_data_proposals_writes_the_format_asked_and_its_recall(devkit, tmp_path):
    mat = tmp_path / "val.kmeans.mat"
    report = proposals_command.main(small(devkit, tmp_path, "method=kmeans", "task.proposals.k=6",
                                          f"task.proposals.output={mat}"))
    val = open_detection_set("voc", root=devkit, split="val", classes=list(SHAPE_CLASSES), train=False)
    ids = [it.image_id for it in val.items]
    read = read_proposals(mat, ids, [it.size for it in val.items])
    assert read.ids == ids and all(b.shape == (6, 4) for b in read.boxes)
    np.testing.assert_allclose(read.boxes[0], read.boxes[-1])  # minus R: one set for every (same-size) image
    on_disk = read_json(tmp_path / "val.kmeans.recall.json")
    assert set(on_disk["proposals"]) == {"recall@0.5", "recall@0.7", "AR"}
    assert set(on_disk["proposals"]["AR"]) == {"100", "300", "1000"} and on_disk == json.loads(json.dumps(report))
    assert (tmp_path / "val.kmeans.recall.png").stat().st_size > 0

    env = without_torch(tmp_path)  # the file as stored predictions: the same recall, without torch
    done = subprocess.run([sys.executable, "-m", "cvtool", "eval", *small(devkit, tmp_path, f"predictions={mat}",
                                                                          f"json={tmp_path / 'm.json'}")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert read_json(tmp_path / "m.json") == report["proposals"]

    converted = tmp_path / "val.mmdet.pkl"  # a proposal file in, another format out, the same boxes
    proposals_command.main(small(devkit, tmp_path, f"method={mat}", f"task.proposals.output={converted}",
                                 "task.proposals.format=mmdet"))
    mmdet = pickle.loads(converted.read_bytes())
    assert isinstance(mmdet, list) and len(mmdet) == len(ids)
    np.testing.assert_allclose(mmdet[1][:, :4], read.boxes[1], atol=1e-4)


def test_a_proposal_file_that_does_not_match_the_split_is_one_line_and_exit_2(devkit, tmp_path):
    short = tmp_path / "short.pkl"
    short.write_bytes(pickle.dumps([np.array([[0.0, 0.0, 10.0, 10.0]], np.float32)] * 3))  # 3 images, val has 4
    result = CliRunner().invoke(app, ["data", "proposals", *small(devkit, tmp_path, f"method={short}")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(short) in result.output.replace("\n", "")


def test_proposals_follow_the_image_through_flips_and_are_sanitized_apart_from_the_objects(tmp_path):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (40, 20)).save(image)
    item = DetectionItem("a", image, np.array([[2.0, 2.0, 12.0, 10.0]], np.float32), np.array([1]),
                         np.array([False]), (40, 20))
    item.proposals = np.array([[0.0, 0.0, 10.0, 5.0], [39.5, 0.0, 45.0, 5.0]], np.float32)  # the 2nd: < 1 px inside
    dataset = DetectionSet([item], ["a", "b"], "voc", "test", train=True)
    dataset.transform = with_sanitizing(v2.RandomHorizontalFlip(p=1.0))
    _, target = dataset[0]
    np.testing.assert_allclose(target["boxes"].numpy(), [[28.0, 2.0, 38.0, 10.0]])
    np.testing.assert_allclose(target["proposals"].numpy(), [[30.0, 0.0, 40.0, 5.0]])  # flipped; the sliver dropped
    assert target["labels"].tolist() == [1] and target["removed"] == 0


MODELS = {  # the lineage, each trained for one epoch on the tiny devkit
    "fast_rcnn": ["model=fast_rcnn", "model.proposals=kmeans", "task.proposals.k=20"],
    "faster_rcnn": ["model=fast_rcnn", "model.proposals=rpn"],
    "rcnn": ["model=rcnn", "model.proposals=selective_search", "model.fit_proposals=10", "model.test_proposals=50"],
    "overfeat": ["model=overfeat"],
}


@pytest.fixture(scope="module")
def trained(devkit, tmp_path_factory) -> dict[str, Path]:
    """best.pt of each model of MODELS."""
    found = {}
    for name, model in MODELS.items():
        runs = tmp_path_factory.mktemp(f"runs_{name}")
        train.main(small(devkit, runs, *model, "data.workers=0", "trainer.val_every=1"))
        found[name] = next(runs.rglob("best.pt"))
    return found


@pytest.mark.parametrize("name", list(MODELS))
def test_each_model_of_the_lineage_trains_and_evaluates(name, trained, tmp_path):
    metrics = read_json(trained[name].parent.parent / "metrics.json")
    assert metrics["model"] == MODELS[name][0].split("=")[1] and metrics["epochs"] == 1
    result, = evaluate.main([f"ckpt={trained[name]}", f"paths.runs={tmp_path}", "hardware=cpu", "plots=false"])
    assert 0.0 <= result["voc10"]["mAP"] <= 1.0 and set(result["voc07"]["per_class_AP"]) == set(SHAPE_CLASSES)
    if name == "rcnn":  # the SVMs and box regressors were fitted after the last epoch and saved
        weights = model_weights(load_checkpoint(trained[name]))
        assert float(weights["fitted"]) == 1.0 and weights["svm_weight"].abs().sum() > 0


def test_proposal_models_predict_on_plain_images_with_their_method(trained, devkit, tmp_path):
    source = tmp_path / "photos"
    source.mkdir()
    for jpg in sorted((devkit / "JPEGImages").glob("*.jpg"))[:2]:
        shutil.copy(jpg, source / jpg.name)
    predict.main([f"ckpt={trained['fast_rcnn']}", f"source={source}", f"paths.runs={tmp_path}", "hardware=cpu",
                  "overlays=2"])
    out = only_run_dir(tmp_path / "detection" / "predict")
    assert len(list((out / "overlays").glob("*.png"))) == 2 and (out / "results").is_dir()


def test_visualize_draws_a_checkpoints_proposals(trained, tmp_path):
    result = visualize.main("proposals", [f"ckpt={trained['rcnn']}", f"paths.runs={tmp_path}", "hardware=cpu",
                                          "visualize.images=2"])
    pictures = sorted((Path(result["run_dir"]) / "proposals").glob("*.png"))
    assert result["proposals"] == "selective_search" and len(pictures) == 2


def test_overfeat_exports_with_its_greedy_merge_and_proposal_models_refuse(trained, tmp_path):
    result, = export.main([f"ckpt={trained['overfeat']}", f"paths.runs={tmp_path}", "hardware=cpu",
                           "format=torch_export"])
    assert all(c["passed"] for c in result["checks"])
    side = read_json(Path(result["path"]).with_suffix(".json"))
    assert side["postprocess"]["select"]["method"] == "greedy_merge"
    common = [f"paths.runs={tmp_path}", "hardware=cpu", "plots=false"]
    exported, = evaluate.main([f"model_file={result['path']}", *common])
    direct, = evaluate.main([f"ckpt={trained['overfeat']}", *common])
    assert exported["voc10"]["mAP"] == pytest.approx(direct["voc10"]["mAP"], abs=1e-4)
    refused = CliRunner().invoke(app, ["export", f"ckpt={trained['fast_rcnn']}", f"paths.runs={tmp_path}"])
    assert refused.exit_code == 2 and "does not export" in refused.output
