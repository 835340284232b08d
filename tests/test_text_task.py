"""`task=text` end to end on tiny synthetic MJSynth-layout words: CRNN + CTC and the dictionary classifier trained
and evaluated, predict -> stored evaluation (without torch) giving the checkpoint's numbers, export of the CRNN (its
LSTM included) verified and evaluated, the alignment and character saliency pictures, and bad inputs as one line
naming file and line with exit code 2."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import read_json, without_torch
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.app import app
from cvtool.commands import evaluate, export, predict, train, visualize
from cvtool.data.word_annotations import read_annotations, read_text_file

TINY = ["task=text", "dataset.synth.train_words=40", "dataset.synth.renders=3", "dataset.synth.val_renders=1",
        "dataset.synth.test_words=12", "dataset.synth.test_renders=1", "dataset.synth.fonts=bundled",
        "data.workers=0", "hardware=cpu", "logger=[]", "plots=false", "trainer.epochs=1", "data.batch_size=32",
        "model.width=8", "model.hidden=16"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Overrides, and one-epoch checkpoints of the CRNN and of the dictionary classifier."""
    root = tmp_path_factory.mktemp("text")
    common = [f"paths.datasets={root / 'datasets'}", f"paths.runs={root / 'runs'}", *TINY]
    trained = {"crnn": train.main([*common, "name=crnn"])[0],
               "words": train.main([*common, "model=word_classifier", "model.hidden=32", "task.lexicon_size=30",
                                    "name=words"])[0]}
    ckpt = {name: root / "runs" / "text" / "train" / name / "checkpoints" / "best.pt" for name in trained}
    return {"common": common, "ckpt": ckpt, "trained": trained, "data": root / "datasets" / "synth_words"}


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_training_reports_the_text_metrics_and_the_classes(runs):
    crnn, words = runs["trained"]["crnn"], runs["trained"]["words"]
    assert crnn["class_names"] == list("0123456789abcdefghijklmnopqrstuvwxyz")
    final = crnn["final"]
    assert set(final["word_acc"]) == {"exact", "ignore_case", "ignore_case_symbol"}
    assert final["num_samples"] == 12 and 0 <= final["one_minus_ned"] <= 1
    assert crnn["metric"] == "word_acc.ignore_case_symbol"
    # the dictionary classifier's classes: the 30 most frequent training words (every word equally frequent: the
    # first 30 in order of appearance), folded to lower case
    train_words = [item.text.lower() for item in read_annotations(runs["data"] / "annotation_train.txt",
                                                                  lexicon_path=runs["data"] / "lexicon.txt")]
    assert words["class_names"] == list(dict.fromkeys(train_words))[:30]


@pytest.mark.parametrize("model", ["crnn", "words"])
def test_predict_then_eval_of_the_stored_words_equals_eval_of_the_checkpoint(runs, model, tmp_path):
    ckpt = runs["ckpt"][model]
    evaluate.main([f"ckpt={ckpt}", *runs["common"], "dataset.split=val", f"json={tmp_path / 'direct.json'}"])
    result = predict.main([f"ckpt={ckpt}", *runs["common"], "dataset.split=val", "overlays=2"])[0]
    files = {Path(f).name: Path(f) for f in result["files"]}
    assert set(files) == {"pred.txt", "predictions.csv", "gt.txt"}
    predicted, truth = read_text_file(files["pred.txt"]), read_text_file(files["gt.txt"])
    assert [p for p, _ in predicted] == [p for p, _ in truth] and len(truth) == 40
    with open(files["predictions.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == [t for _, t in predicted] and all(0 <= float(r["confidence"]) <= 1
                                                                         for r in rows)
    assert len(list((files["pred.txt"].parent / "overlays").glob("*.png"))) == 2
    evaluate.main(["task=text", f"predictions={files['pred.txt']}", *runs["common"],
                   f"json={tmp_path / 'stored.json'}"])
    direct, stored = read_json(tmp_path / "direct.json"), read_json(tmp_path / "stored.json")
    assert stored == direct


def test_stored_words_are_evaluated_without_torch_against_the_dataset_split(runs, tmp_path):
    annotation = runs["data"] / "annotation_test.txt"
    items = read_annotations(annotation, lexicon_path=runs["data"] / "lexicon.txt")
    pred = tmp_path / "pred.txt"  # every word read right, but for the first one (lower case: right ignoring case)
    pred.write_text("".join(f"{i.path}\t{i.text.lower() if n == 0 else i.text}\n" for n, i in enumerate(items)))
    env = without_torch(tmp_path)
    done = subprocess.run([sys.executable, "-m", "cvtool", "eval", "task=text", f"predictions={pred}",
                           *runs["common"], f"json={tmp_path / 'm.json'}"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = read_json(tmp_path / "m.json")
    exact = (len(items) - (items[0].text != items[0].text.lower())) / len(items)
    assert metrics["word_acc"] == {"exact": exact, "ignore_case": 1.0, "ignore_case_symbol": 1.0}
    assert metrics["num_samples"] == len(items) and metrics["char_recall"] == 1.0


def test_a_missing_prediction_is_named(runs, tmp_path):
    items = read_annotations(runs["data"] / "annotation_test.txt", lexicon_path=runs["data"] / "lexicon.txt")
    pred = tmp_path / "pred.txt"
    pred.write_text("".join(f"{i.path}\t{i.text}\n" for i in items[1:]))
    out = _cli("eval", "task=text", f"predictions={pred}", *runs["common"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "1 of 12 images" in out.output and Path(items[0].path).name in out.output.replace("\n", "")


def test_predict_on_a_folder_of_word_images(runs, tmp_path):
    source = tmp_path / "crops"
    source.mkdir()
    for path in sorted(runs["data"].rglob("*.jpg"))[:3]:
        shutil.copy(path, source / path.name)
    result = predict.main([f"ckpt={runs['ckpt']['crnn']}", *runs["common"], f"source={source}", "overlays=3"])[0]
    files = {Path(f).name: Path(f) for f in result["files"]}
    assert set(files) == {"pred.txt", "predictions.csv"}
    assert len(read_text_file(files["pred.txt"])) == 3
    overlay = next((files["pred.txt"].parent / "overlays").glob("*.png"))
    assert Image.open(overlay).size[1] >= 64


def test_crnn_export_with_its_lstm_is_verified_and_evaluates_like_the_checkpoint(runs, tmp_path):
    result = export.main([f"ckpt={runs['ckpt']['crnn']}", *runs["common"], "format=onnx"])[0]
    assert result["checks"] and all(c["passed"] for c in result["checks"])
    sidecar = read_json(Path(result["path"]).with_suffix(".json"))
    assert sidecar["graph"]["kind"] == "recognizer" and "blank" in sidecar["postprocess"]["logits"]
    evaluate.main([f"ckpt={runs['ckpt']['crnn']}", *runs["common"], f"json={tmp_path / 'eager.json'}"])
    evaluate.main([f"model_file={result['path']}", *runs["common"], f"json={tmp_path / 'onnx.json'}"])
    assert read_json(tmp_path / "onnx.json")["one_minus_ned"] == pytest.approx(
        read_json(tmp_path / "eager.json")["one_minus_ned"], abs=0.02)
    scripted = export.main([f"ckpt={runs['ckpt']['crnn']}", *runs["common"], "format=torchscript"])[0]
    assert all(c["passed"] for c in scripted["checks"])


def test_visualize_alignment_and_character_saliency(runs):
    common = [f"ckpt={runs['ckpt']['crnn']}", *runs["common"], "visualize.images=2"]
    aligned = visualize.main("alignment", common)
    assert aligned["num_images"] == 2 and len(aligned["words"]) == 2
    assert Image.open(Path(aligned["run_dir"]) / "alignment.png").size[0] > 300
    saliency = visualize.main("saliency", common)
    assert saliency["num_images"] == 2 and Path(saliency["run_dir"], "saliency.png").is_file()
    words = visualize.main("gradcam", [f"ckpt={runs['ckpt']['words']}", *runs["common"], "visualize.images=1"])
    assert words["num_images"] == 1
    refused = _cli("visualize", "alignment", f"ckpt={runs['ckpt']['words']}", *runs["common"])
    assert refused.exit_code == 2 and "a dictionary classifier has no frames" in " ".join(refused.output.split())


def _copy_dataset(runs, tmp_path: Path) -> Path:
    root = tmp_path / "words"
    shutil.copytree(runs["data"], root)
    (root / ".shapes.json").unlink()  # a user's own copy: not regenerated
    return root


def _train_on(runs, root: Path, *extra: str):
    return _cli("train", *runs["common"], f"dataset.root={root}", "dataset.synth=null", "name=bad", *extra)


def test_an_out_of_range_lexicon_index_is_one_line_naming_file_and_line(runs, tmp_path):
    root = _copy_dataset(runs, tmp_path)
    lines = (root / "annotation_train.txt").read_text().splitlines()
    lines[4] = lines[4].rsplit(" ", 1)[0] + " 99999"
    (root / "annotation_train.txt").write_text("\n".join(lines) + "\n")
    out = _train_on(runs, root)
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "annotation_train.txt:5" in out.output.replace("\n", "")


def test_labels_too_long_for_the_ctc_frames_are_refused_before_training(runs, tmp_path):
    out = _cli("train", *runs["common"], "dataset.image_size=[32,16]", "name=narrow")  # 4 frames
    text = " ".join(out.output.split())
    assert out.exit_code == 2 and "Traceback" not in text
    assert "annotation_train.txt:" in text and "CTC frames" in text and "emits 4" in text


def test_characters_outside_the_charset_are_named_and_can_be_dropped(runs, tmp_path):
    out = _cli("train", *runs["common"], "task.charset=abcdefghijklmnopqrstuvwxyz", "name=letters")
    text = " ".join(out.output.split())
    assert out.exit_code == 2 and "Traceback" not in text and "annotation_train.txt:" in text
    dropped = _cli("train", *runs["common"], "task.charset=abcdefghijklmnopqrstuvwxyz", "task.unknown_chars=skip",
                   "name=letters_skip")
    assert dropped.exit_code == 0, dropped.output


def test_corrupt_images_are_named_and_skipped_under_skip_invalid(runs, tmp_path):
    root = _copy_dataset(runs, tmp_path)
    first = read_annotations(root / "annotation_train.txt", lexicon_path=root / "lexicon.txt")[0]
    Path(first.path).write_bytes(b"")
    out = _train_on(runs, root, "dataset.cache=false")
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert Path(first.path).name in out.output.replace("\n", "")
    skipped = _train_on(runs, root, "data.skip_invalid=true", "name=skip")
    assert skipped.exit_code == 0, skipped.output
    assert Path(first.path).name in skipped.output.replace("\n", "")
