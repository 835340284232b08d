"""`task=embedding` end to end on tiny synthetic identities: training on P×K batches of the training identities,
evaluation on the unseen test identities, predict -> stored evaluation (without torch) giving the checkpoint's
numbers, export verified and evaluated, the pictures of `visualize`, and bad inputs as one line with exit code 2."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import read_json, without_torch
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.app import app
from cvtool.commands import evaluate, export, predict, train, visualize
from cvtool.data.identity_folders import scan_identities
from cvtool.data.lfw_pairs import read_pairs
from cvtool.errors import CvtoolError
from cvtool.tasks.embedding import CollapseMonitor

TINY = ["task=embedding", "dataset.synth.num_identities=64", "dataset.synth.min_images=4",
        "dataset.synth.max_images=8", "dataset.synth.pairs_per_fold=12", "dataset.synth.test_fraction=0.333",
        "data.workers=0", "hardware=cpu", "logger=[]", "plots=false", "trainer.epochs=1", "data.batch_size=32",
        "model.dim=32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Overrides, and one-epoch checkpoints of the triplet model and of the softmax baseline."""
    root = tmp_path_factory.mktemp("embedding")
    common = [f"paths.datasets={root / 'datasets'}", f"paths.runs={root / 'runs'}", *TINY]
    trained = {"triplet": train.main([*common, "name=triplet"])[0],
               "softmax": train.main([*common, "task.loss=softmax", "data.sampler=null", "name=softmax"])[0]}
    ckpt = {name: root / "runs" / "embedding" / "train" / name / "checkpoints" / "best.pt" for name in trained}
    return {"common": common, "ckpt": ckpt, "trained": trained, "data": root / "datasets" / "identities"}


def test_training_and_test_identities_are_disjoint_and_the_pairs_name_test_identities_only(runs):
    trained = runs["trained"]["triplet"]
    found = scan_identities(runs["data"])
    pairs, folds, per_fold = read_pairs(runs["data"] / "pairs.txt", {k: {i.number for i in v}
                                                                      for k, v in found.items()})
    named = {p.left[0] for p in pairs} | {p.right[0] for p in pairs}
    assert (folds, per_fold, len(pairs)) == (10, 12, 240)
    assert not named & set(trained["class_names"])
    assert set(trained["class_names"]) | named == set(found)
    final = trained["final"]
    assert final["num_identities"] == len(named)
    assert set(final["verification"]) >= {"accuracy", "accuracy_std", "roc_auc", "eer", "tar_at_far_1e-3"}
    assert set(final["retrieval"]) >= {"recall_at_1", "recall_at_5", "map_at_r"}
    assert trained["metric"] == "verification.accuracy" and trained["best"] == final["verification"]["accuracy"]


@pytest.mark.parametrize("model", ["triplet", "softmax"])
def test_predict_then_eval_of_the_stored_embeddings_equals_eval_of_the_checkpoint(runs, model, tmp_path):
    ckpt = runs["ckpt"][model]
    evaluate.main([f"ckpt={ckpt}", *runs["common"], f"json={tmp_path / 'direct.json'}"])
    result = predict.main([f"ckpt={ckpt}", *runs["common"], "overlays=3"])[0]
    files = {Path(f).name: Path(f) for f in result["files"]}
    assert set(files) == {"embeddings.npy", "index.csv", "pairs.txt"}
    embeddings = np.load(files["embeddings.npy"])
    assert embeddings.shape[1] == 32 and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    with open(files["index.csv"]) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(embeddings) and all(Path(r["path"]).parent.name == r["identity"] for r in rows)
    assert Image.open(files["embeddings.npy"].parent / "overlays" / "neighbours.png").size[1] > 200
    evaluate.main(["task=embedding", f"predictions={files['embeddings.npy']}", *runs["common"],
                   f"json={tmp_path / 'stored.json'}"])
    direct, stored = read_json(tmp_path / "direct.json"), read_json(tmp_path / "stored.json")
    for group in ("verification", "retrieval"):
        assert stored[group] == pytest.approx(direct[group], abs=1e-6)


def test_stored_embeddings_are_evaluated_without_torch(runs, tmp_path):
    result = predict.main([f"ckpt={runs['ckpt']['triplet']}", *runs["common"], "overlays=0"])[0]
    embeddings = next(Path(f) for f in result["files"] if f.endswith(".npy"))
    env = without_torch(tmp_path)
    done = subprocess.run([sys.executable, "-m", "cvtool", "eval", "task=embedding", f"predictions={embeddings}",
                           *runs["common"], f"json={tmp_path / 'm.json'}"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Recall@1" in done.stdout and read_json(tmp_path / "m.json")["verification"]["accuracy"] is not None


def test_export_is_verified_and_evaluates_like_the_checkpoint(runs, tmp_path):
    result = export.main([f"ckpt={runs['ckpt']['triplet']}", *runs["common"], "format=onnx"])[0]
    assert result["checks"] and all(c["passed"] for c in result["checks"])
    evaluate.main([f"ckpt={runs['ckpt']['triplet']}", *runs["common"], f"json={tmp_path / 'eager.json'}"])
    evaluate.main([f"model_file={result['path']}", *runs["common"], f"json={tmp_path / 'onnx.json'}"])
    eager, onnx = read_json(tmp_path / "eager.json"), read_json(tmp_path / "onnx.json")
    assert onnx["retrieval"] == pytest.approx(eager["retrieval"], abs=2e-3)
    assert onnx["verification"]["roc_auc"] == pytest.approx(eager["verification"]["roc_auc"], abs=2e-3)


@pytest.mark.parametrize("method", ["roc", "projection", "neighbours"])
def test_visualize_draws_the_test_embeddings(runs, method):
    result = visualize.main(method, [f"ckpt={runs['ckpt']['triplet']}", *runs["common"], "visualize.images=3"])
    assert Image.open(result["file"]).size[0] > 300
    assert result["metrics"]["retrieval"]["num_queries"] > 0


def test_an_identity_with_fewer_than_k_images_is_skipped_with_a_count_and_too_few_left_is_an_error(runs, capsys):
    train.main([*runs["common"], "data.images_per_identity=8", "data.batch_size=16", "name=k8"])
    log = " ".join(capsys.readouterr().out.split())
    assert re.search(r"\d+ of 43 training identities have fewer than 8 images: P×K sampling skips them", log)
    with pytest.raises(CvtoolError, match="training identities have at least 8 images, and a P×K batch needs 40"):
        train.main([*runs["common"], "data.images_per_identity=8", "data.batch_size=320", "name=k8big"])


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_a_test_identity_seen_in_training_is_refused(runs, tmp_path):
    other_split = _cli("eval", f"ckpt={runs['ckpt']['triplet']}", *runs["common"], "dataset.pairs=null",
                       "dataset.split_seed=5")
    assert other_split.exit_code == 2 and "Traceback" not in other_split.output
    assert "also in the model's training identities" in other_split.output
    train_root = runs["data"]
    overlap = _cli("train", *runs["common"], f"dataset.train_root={train_root}", "name=overlap")
    assert overlap.exit_code == 2 and "also in dataset.train_root" in overlap.output


def test_bad_pairs_files_are_one_line_naming_file_and_line(runs, tmp_path):
    lines = (runs["data"] / "pairs.txt").read_text().splitlines()
    cases = {"header": (["10\t13", *lines[1:]], "pairs.txt:"),
             "missing image": ([lines[0], lines[1].split("\t")[0] + "\t1\t99", *lines[2:]], "pairs.txt:2"),
             "missing identity": ([lines[0], "nobody\t1\t2", *lines[2:]], "pairs.txt:2")}
    for name, (content, where) in cases.items():
        path = tmp_path / name.replace(" ", "_") / "pairs.txt"
        path.parent.mkdir()
        path.write_text("\n".join(content) + "\n")
        out = _cli("eval", f"ckpt={runs['ckpt']['triplet']}", *runs["common"], f"dataset.pairs={path}")
        assert out.exit_code == 2 and "Traceback" not in out.output, name
        assert where in out.output.replace("\n", ""), (name, out.output)


def test_collapse_is_reported_once_when_the_mean_distance_falls_towards_zero():
    monitor = CollapseMonitor(0.1, momentum=0.5)
    for step, distance in enumerate([1.0, 1.2, 1.1, 0.5, 0.05, 0.01, 0.0, 0.0, 0.0]):
        monitor.update(distance, step)
    assert [w["kind"] for w in monitor.warnings] == ["collapse"] and monitor.warnings[0]["step"] == 6
    healthy = CollapseMonitor(0.1)
    for distance in [0.3, 0.8, 1.2, 1.1, 1.0, 1.05]:
        healthy.update(distance)
    assert healthy.warnings == []


def test_visualize_dataset_says_identity_folders_have_nothing_to_draw(runs):
    out = _cli("visualize", "dataset", *runs["common"])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "identity folders have no boxes, masks or joints to draw" in " ".join(out.output.split())
