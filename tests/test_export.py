"""`cvtool export`: every format for one model of each task, verified against eager PyTorch; predict/eval on the
exported files give the checkpoint's results; fallbacks are said; a mismatch or a damaged file is one clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import only_run_dir

from cvtool.commands import evaluate, export, predict, train
from cvtool.data.shapes import generate_devkit
from cvtool.errors import CvtoolError, ExitRequest

FORMATS = ("onnx", "torchscript", "torch_export")
SMALL = {"num_train": 8, "num_val": 4, "image_size": 128, "min_objects": 1, "max_objects": 4, "min_size": 12,
         "max_size": 48, "seed": 0}
MODELS = {  # one small model per task, trained a few steps on tiny data
    "classification": [],
    "detection": ["task=detection", "model=yolo", "model.width=8", "model.score_thresh=0.001"],
    "segmentation": ["task=segmentation", "model=unet", "model.width=8", "model.depth=2"],
    "rcnn": ["task=detection", "model=faster_rcnn_mobilenet_320"],
}


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return generate_devkit(tmp_path_factory.mktemp("export") / "devkit", **SMALL)


@pytest.fixture(scope="module")
def checkpoints(devkit, datasets_root, tmp_path_factory) -> dict[str, Path]:
    """A briefly trained checkpoint per entry of MODELS."""
    found = {}
    for name, model in MODELS.items():
        runs = tmp_path_factory.mktemp(f"runs_{name}")
        data = [f"paths.datasets={datasets_root}", "dataset.synth.num_train=180", "dataset.synth.num_val=60",
                "data.batch_size=30"] if name == "classification" else \
               [f"dataset.root={devkit}", "dataset.synth=null", "data.batch_size=4"]
        train.main([*model, *data, f"paths.runs={runs}", "hardware=cpu", "trainer.epochs=1", "data.workers=0",
                    "logger=[]", "plots=false"])
        found[name] = next(runs.rglob("best.pt"))
    return found


def run_export(ckpt: Path, tmp_path: Path, *extra: str) -> dict:
    result, = export.main([f"ckpt={ckpt}", f"paths.runs={tmp_path / 'runs'}", "hardware=cpu", *extra])
    return result


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("name", ["classification", "detection", "segmentation"])
def test_every_task_exports_to_every_format_and_predicts_like_the_checkpoint(name, fmt, checkpoints, tmp_path):
    result = run_export(checkpoints[name], tmp_path, f"format={fmt}")
    path = Path(result["path"])
    assert path.suffix == {"onnx": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}[fmt] and path.is_file()
    assert len(result["checks"]) == 2 and all(c["passed"] for c in result["checks"])
    sizes = {c["sample"] for c in result["checks"]}
    assert len(sizes) == 2  # two batch sizes or two image sizes
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["format"] == fmt and side["task"] == name
    assert side["class_names"] and side["preprocess"]["mean"] and side["graph"]["outputs"]
    assert not list(path.parent.glob(".*partial"))

    # eval and predict on the exported file give the checkpoint's numbers and files
    common = [f"paths.runs={tmp_path / 'runs'}", "hardware=cpu", "plots=false"]
    exported, = evaluate.main([f"model_file={path}", *common])
    direct, = evaluate.main([f"ckpt={checkpoints[name]}", *common])
    key = {"classification": "top1", "segmentation": "mIoU"}.get(name)
    if key:
        assert exported[key] == pytest.approx(direct[key], abs=1e-9)
    else:
        assert exported["voc10"]["mAP"] == pytest.approx(direct["voc10"]["mAP"], abs=1e-4)
    predict.main([f"model_file={path}", *common, "overlays=2", f"paths.runs={tmp_path / 'exported'}"])
    out = only_run_dir(tmp_path / "exported" / name / "predict")
    assert len(list((out / "overlays").glob("*.png"))) == 2
    if name == "classification":
        predict.main([f"ckpt={checkpoints[name]}", *common, "overlays=0", f"paths.runs={tmp_path / 'direct'}"])
        np.testing.assert_allclose(np.load(out / "logits.npy"), np.load(
            only_run_dir(tmp_path / "direct" / name / "predict") / "logits.npy"), atol=1e-3)


@pytest.mark.parametrize("fmt", FORMATS)
def test_torchvision_detectors_export_through_the_paths_that_handle_them(fmt, checkpoints, tmp_path):
    result = run_export(checkpoints["rcnn"], tmp_path, f"format={fmt}")
    assert all(c["passed"] for c in result["checks"])
    if fmt == "onnx":  # data-dependent shapes: the TorchScript-based ONNX exporter, said so
        assert "TorchScript-based" in result["exporter"] and "skipped" in result["notes"][0]
    else:  # torch.export cannot capture them: TorchScript, said so
        assert result["format"] == "torchscript" and result["exporter"] == "torch.jit.script"
        assert Path(result["path"]).suffix == ".pt"
        assert (fmt == "torchscript") == (not result["notes"])
    metrics, = evaluate.main([f"model_file={result['path']}", f"paths.runs={tmp_path / 'runs'}", "hardware=cpu",
                              "plots=false"])
    direct, = evaluate.main([f"ckpt={checkpoints['rcnn']}", f"paths.runs={tmp_path / 'runs'}", "hardware=cpu",
                             "plots=false"])
    assert metrics["voc10"]["mAP"] == pytest.approx(direct["voc10"]["mAP"], abs=1e-4)


def test_static_export_fixes_the_shape_and_still_predicts_batches(checkpoints, tmp_path):
    result = run_export(checkpoints["classification"], tmp_path, "dynamic=false", "opset=13")
    side = json.loads(Path(result["path"]).with_suffix(".json").read_text())
    assert side["graph"]["input_shape"] == [1, 3, 64, 64] and not side["graph"]["dynamic"]
    # opset 13 is older than the torch.export-based exporter writes: the TorchScript-based one, said so
    assert side["graph"]["opset"] == 13 and "TorchScript-based, opset 13" in result["exporter"] and result["notes"]
    import onnxruntime as ort

    assert [d for d in ort.InferenceSession(result["path"]).get_inputs()[0].shape] == [1, 3, 64, 64]
    common = ["hardware=cpu", "overlays=0", "data.eval_batch_size=7"]
    predict.main([f"model_file={result['path']}", *common, f"paths.runs={tmp_path / 'exported'}"])
    predict.main([f"ckpt={checkpoints['classification']}", *common, f"paths.runs={tmp_path / 'direct'}"])
    logits = [np.load(only_run_dir(tmp_path / d / "classification" / "predict") / "logits.npy")
              for d in ("exported", "direct")]
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-3)


def test_a_mismatch_fails_with_exit_code_1_and_writes_nothing(checkpoints, tmp_path):
    with pytest.raises(ExitRequest) as raised:  # ONNX Runtime's last digits differ: no tolerance fails it
        run_export(checkpoints["classification"], tmp_path, "export.atol=0", "export.rtol=0")
    assert raised.value.code == 1 and "disagrees with the eager model" in raised.value.message
    out = only_run_dir(tmp_path / "runs" / "classification" / "export")
    assert [p.name for p in out.iterdir() if not p.name.startswith((".hydra", "export.log"))] == []


def test_bad_format_and_damaged_model_files_are_one_clear_error(checkpoints, tmp_path):
    with pytest.raises(CvtoolError, match="unknown export format 'tflite'"):
        run_export(checkpoints["classification"], tmp_path, "format=tflite")
    with pytest.raises(CvtoolError, match="config key .opset. must be an integer, got .latest."):
        run_export(checkpoints["classification"], tmp_path, "opset=latest")
    for fmt in FORMATS:
        path = Path(run_export(checkpoints["classification"], tmp_path, f"format={fmt}")["path"])
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # truncated
        with pytest.raises(CvtoolError, match=f"cannot read the {fmt} model") as raised:
            predict.main([f"model_file={path}", f"paths.runs={tmp_path / 'runs'}", "hardware=cpu"])
        assert str(path) in raised.value.line()
    path.with_suffix(".json").unlink()
    with pytest.raises(CvtoolError, match="sidecar JSON is missing"):
        predict.main([f"model_file={path}", f"paths.runs={tmp_path / 'runs'}"])


def test_cli_names_the_damaged_file_without_a_traceback(checkpoints, tmp_path):
    path = Path(run_export(checkpoints["classification"], tmp_path)["path"])
    path.write_bytes(b"not an onnx model")
    result = subprocess.run([sys.executable, "-m", "cvtool.cli.app", "predict", f"model_file={path}",
                             f"paths.runs={tmp_path / 'runs'}"], capture_output=True, text=True)
    assert result.returncode == 2 and str(path) in result.stderr and "Traceback" not in result.stderr


def test_exported_input_sizes_are_kept_to_resized_for_classifiers_refused_otherwise(checkpoints, tmp_path):
    small = run_export(checkpoints["classification"], tmp_path, "input_size=48")  # classifiers: resized to it
    metrics, = evaluate.main([f"model_file={small['path']}", f"paths.runs={tmp_path / 'runs'}", "plots=false"])
    assert metrics["num_samples"] == 60 and metrics["top1"] is not None
    fixed = run_export(checkpoints["segmentation"], tmp_path, "dynamic=false", "input_size=96")
    with pytest.raises(CvtoolError, match="takes 3x96x96 inputs") as raised:
        predict.main([f"model_file={fixed['path']}", f"paths.runs={tmp_path / 'runs'}"])
    assert fixed["path"] in raised.value.line()
