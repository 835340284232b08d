"""`task=keypoints` end to end on tiny stick figures: both models train, predict writes a COCO keypoint results file
that `eval predictions=` scores exactly as `eval ckpt=` does, overlays and joint attributions are drawn, a video is
posed, and bad inputs are one line with exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_json
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.app import app
from cvtool.commands import evaluate, predict, train, visualize
from cvtool.errors import CvtoolError

TINY = ["dataset.synth.num_train=48", "dataset.synth.num_val=12", "data.workers=0", "hardware=cpu", "logger=[]",
        "plots=false", "trainer.epochs=1"]
SMALL_HOURGLASS = ["model.stacks=1", "model.depth=2", "model.channels=32", "data.batch_size=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Overrides and a one-epoch checkpoint of each keypoint model on the same tiny stick figures."""
    root = tmp_path_factory.mktemp("keypoints")
    common = [f"paths.datasets={root / 'datasets'}", f"paths.runs={root / 'runs'}", *TINY]
    heatmap = train.main(["task=keypoints", *common, *SMALL_HOURGLASS, "name=heatmap"])[0]
    rcnn = train.main(["task=keypoints", "model=keypoint_rcnn", *common, "data.limit=8", "data.batch_size=4",
                       "model.box_detections_per_img=10", "model.box_score_thresh=0.0", "name=rcnn"])[0]
    ckpts = {name: root / "runs" / "keypoints" / "train" / name / "checkpoints" / "best.pt" for name in ("heatmap",
                                                                                                       "rcnn")}
    return {"common": common, "ckpt": ckpts, "trained": {"heatmap": heatmap, "rcnn": rcnn}}


@pytest.mark.parametrize("model", ["heatmap", "rcnn"])
def test_predict_then_eval_of_its_results_equals_eval_of_the_checkpoint(runs, model, tmp_path):
    ckpt = runs["ckpt"][model]
    direct = evaluate.main([f"ckpt={ckpt}", *runs["common"], f"json={tmp_path / 'direct.json'}"])
    predicted = predict.main([f"ckpt={ckpt}", *runs["common"], "overlays=2"])[0]
    results = Path(predicted["files"][0])
    entries = json.loads(results.read_text())
    assert entries and all(len(e["keypoints"]) == 3 * 14 for e in entries)
    stored = evaluate.main(["task=keypoints", f"predictions={results}", *runs["common"],
                            f"json={tmp_path / 'stored.json'}"])
    direct, stored = read_json(tmp_path / "direct.json"), read_json(tmp_path / "stored.json")
    assert stored["keypoints"]["AP"] == pytest.approx(direct["keypoints"]["AP"], abs=1e-9)
    assert stored["pck"]["per_keypoint"] == pytest.approx(direct["pck"]["per_keypoint"])
    assert stored["pck"]["mean"] == pytest.approx(direct["pck"]["mean"])
    assert set(direct["keypoints"]) >= {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}
    assert len(direct["pck"]["per_keypoint"]) == 14
    overlays = sorted((results.parent / "overlays").glob("*.png"))
    assert len(overlays) == 2 and Image.open(overlays[0]).size[0] >= 256  # upscaled so joints stay legible


def test_training_selects_on_oks_ap_and_reports_pck(runs):
    trained = runs["trained"]["heatmap"]
    assert trained["metric"] == "keypoints.AP" and trained["best"] is not None
    assert trained["final"]["pck"]["mean"] > 0.05  # 3 steps: already some joints within 0.2 of their box


def test_gradcam_explains_a_chosen_joint_of_each_person_crop(runs):
    result = visualize.main("gradcam", [f"ckpt={runs['ckpt']['heatmap']}", *runs["common"], "visualize.images=2",
                                        "visualize.target=left_wrist"])
    maps = sorted((Path(result["run_dir"]) / "gradcam").glob("*.npy"))
    assert len(maps) == 2 and np.load(maps[0]).shape == (128, 96)  # the crop's size
    assert all(title.startswith("left_wrist") for title in result["classes"])
    with pytest.raises(CvtoolError, match="visualize.target=elbow is not a class"):
        visualize.main("saliency", [f"ckpt={runs['ckpt']['heatmap']}", *runs["common"], "visualize.target=elbow"])


def test_visualize_dataset_draws_the_annotated_skeletons(runs):
    result = visualize.main("dataset", ["task=keypoints", *runs["common"], "overlays=3"])
    assert len(list((Path(result["run_dir"]) / "dataset").glob("*.png"))) == 3


def test_a_video_is_posed_frame_by_frame(runs, tmp_path):
    from test_video_predict import read_lines, write_clip

    root = Path(runs["common"][0].split("=", 1)[1])
    frames = [np.asarray(Image.open(f).convert("RGB")) for f in sorted((root / "stick_figures" / "images" /
                                                                         "val").glob("*.png"))[:4]]
    clip = write_clip(tmp_path / "clip.mp4", frames, "mpeg4")
    result = predict.main([f"ckpt={runs['ckpt']['heatmap']}", f"source={clip}", *runs["common"]])[0]
    lines = read_lines(Path(result["run_dir"]) / "frames.jsonl")
    assert len(lines) == 4 and all(len(p["keypoints"]) == 14 for line in lines for p in line["people"])


def test_a_results_entry_of_3k_minus_1_numbers_is_one_line_exit_2(runs, tmp_path):
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps([{"image_id": 1, "category_id": 1, "score": 0.9, "keypoints": [1.0] * 41}]))
    out = CliRunner().invoke(app, ["eval", "task=keypoints", f"predictions={bad}", *runs["common"]])
    assert out.exit_code == 2
    assert "41 numbers" in out.output and f"{bad.name} [0]" in out.output.replace("\n", "")
    assert "Traceback" not in out.output


def test_a_detectors_boxes_file_is_posed_like_the_annotated_boxes(runs, tmp_path):
    """task.person_boxes=PATH (the top-down protocol with a detector): boxes equal to the annotated ones, scored 1,
    give the numbers of task.person_boxes=gt; a bad entry is one line naming the file and its index."""
    root = Path(runs["common"][0].split("=", 1)[1])
    gt = json.loads((root / "stick_figures" / "annotations" / "person_keypoints_val.json").read_text())
    boxes = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}
             for a in gt["annotations"] if a["num_keypoints"]]
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(boxes))
    ckpt = f"ckpt={runs['ckpt']['heatmap']}"
    evaluate.main([ckpt, *runs["common"], f"json={tmp_path / 'gt.json'}"])
    evaluate.main([ckpt, *runs["common"], f"task.person_boxes={path}", f"json={tmp_path / 'det.json'}"])
    assert read_json(tmp_path / "det.json")["keypoints"] == read_json(tmp_path / "gt.json")["keypoints"]
    path.write_text(json.dumps([{**boxes[0], "bbox": [1, 2, 3]}]))
    with pytest.raises(CvtoolError, match=r"boxes.json \[0\]"):
        evaluate.main([ckpt, *runs["common"], f"task.person_boxes={path}"])
