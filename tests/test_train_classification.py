"""End-to-end classification: train -> run dir contract -> eval -> predict, resume, interruption, bad input."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_json

from cvtool.commands import evaluate, predict, train
from cvtool.errors import CvtoolError, ExitRequest


def run_dir_of(runs: Path, command: str = "train") -> Path:
    return only_run_dir(runs / "classification" / command)


def test_train_writes_the_run_dir_contract(tiny, tmp_path):
    result, = train.main(tiny)
    run = run_dir_of(tmp_path / "runs")
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("train/loss" in r and "lr" in r and "images_per_s" in r for r in records)
    assert [r["epoch"] for r in records if "val/top1" in r] == [1, 2]
    metrics = read_json(run / "metrics.json")
    assert metrics["epochs"] == 2 and 0.0 <= metrics["best"] <= 1.0 and metrics["final"]["num_samples"] == 60
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert state["task"] == "classification" and len(state["class_names"]) == 5
        assert {"model", "optimizer", "scheduler", "rng", "config", "epoch", "step"} <= set(state)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert (run / "plots" / "training_curves.png").stat().st_size > 10_000
    assert result["best"] == metrics["best"]


def test_eval_of_best_checkpoint_reproduces_the_validation_metric(tiny, tmp_path):
    train.main(tiny)
    run = run_dir_of(tmp_path / "runs")
    best = read_json(run / "metrics.json")["best"]
    out = tmp_path / "eval.json"
    metrics, = evaluate.main([f"ckpt={run / 'checkpoints' / 'best.pt'}", f"json={out}",
                              f"paths.runs={tmp_path / 'runs'}", "hardware=cpu"])
    assert metrics["top1"] == best
    assert read_json(out) == metrics == read_json(run_dir_of(tmp_path / "runs", "eval") / "metrics.json")
    assert metrics["num_samples"] == 60 and len(metrics["per_class_acc"]) == 5


def test_eval_of_an_experiment_checkpoint_needs_no_repeated_overrides(tmp_path):
    runs = tmp_path / "runs"
    train.main(["experiment=lenet5_digits", "trainer.epochs=1", "data.limit=200", f"paths.runs={runs}",
                          "hardware=cpu", "logger=[]", "plots=false"])
    metrics, = evaluate.main([f"ckpt={run_dir_of(runs) / 'checkpoints' / 'best.pt'}", f"paths.runs={runs}",
                              "hardware=cpu", "plots=false"])  # the experiment chose model and dataset (digits)
    assert len(metrics["per_class_acc"]) == 10 and metrics["num_samples"] == 359  # 20 % of the 1,797 digits


def test_predict_writes_what_eval_reads_back_to_the_same_metrics(tiny, tmp_path, datasets_root):
    train.main(tiny)
    ckpt = run_dir_of(tmp_path / "runs") / "checkpoints" / "best.pt"
    common = [f"ckpt={ckpt}", f"paths.runs={tmp_path / 'runs'}", "hardware=cpu"]
    direct, = evaluate.main(common)
    predict.main(common)  # no source=: the dataset's evaluation split, with its targets
    out = run_dir_of(tmp_path / "runs", "predict")
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0] == "index,file,target,pred,class,score," + ",".join(f"logit_{k}" for k in range(5))
    assert len(lines) == 61 and np.load(out / "logits.npy").shape == (60, 5)
    assert np.load(out / "targets.npy").shape == (60,)
    assert len(list((out / "overlays").glob("*.png"))) == 60
    for stored in ([f"predictions={out / 'logits.npy'}", f"targets={out / 'targets.npy'}"],
                   [f"predictions={out / 'predictions.csv'}"]):
        metrics, = evaluate.main(["task=classification", *stored, f"paths.runs={tmp_path / 'runs'}"])
        assert metrics == direct
    source = datasets_root / "shapes" / "classification" / "val" / "star"  # plain images: no targets
    predict.main([*common[:1], f"source={source}", f"paths.runs={tmp_path / 'p2'}", "hardware=cpu", "overlays=3"])
    out = run_dir_of(tmp_path / "p2", "predict")
    lines = (out / "predictions.csv").read_text().splitlines()
    assert lines[0].startswith("index,file,pred,class,score,logit_0")
    assert len(lines) == 1 + len(list(source.glob("*.png")))
    assert not (out / "targets.npy").exists() and len(list((out / "overlays").glob("*.png"))) == 3


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def test_resume_after_stop_ends_with_exactly_the_uninterrupted_weights(tiny, tmp_path):
    common = [*tiny, "deterministic=true", "trainer.epochs=3", "data.workers=1"]
    train.main([*common, f"paths.runs={tmp_path / 'a'}"])
    uninterrupted = weights(run_dir_of(tmp_path / "a") / "checkpoints" / "last.pt")
    with pytest.raises(ExitRequest) as stop:
        train.main([*common, f"paths.runs={tmp_path / 'b'}", "trainer.stop_after=1"])
    assert "resume with: cvtool train resume=" in stop.value.message
    run = run_dir_of(tmp_path / "b")
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    train.main([f"resume={run / 'checkpoints' / 'last.pt'}"])
    resumed = weights(run / "checkpoints" / "last.pt")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)
    assert [p.name for p in (tmp_path / "b" / "classification" / "train").iterdir()] == [run.name]
    assert read_json(run / "metrics.json")["epochs"] == 3


def test_sigint_saves_last_checkpoint_and_says_how_to_resume(tiny, tmp_path):
    args = [a for a in tiny if not a.startswith("trainer.epochs")] + ["trainer.epochs=50", "logger=[]"]
    proc = subprocess.Popen([sys.executable, "-m", "cvtool", "train", *args], stderr=subprocess.PIPE, text=True)
    jsonl = None
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((tmp_path / "runs").glob("classification/train/*/metrics.jsonl"))
        if found and found[0].read_text().count("\n") >= 2:
            jsonl = found[0]
            break
        time.sleep(0.2)
    assert jsonl is not None, "training did not start"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGINT
    assert "interrupted by SIGINT" in stderr and "resume with: cvtool train resume=" in stderr
    last = jsonl.parent / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert 0 < state["step"] and state["epoch"] < 50


def test_incompatible_checkpoint_class_count_is_a_clear_error(tiny, tmp_path):
    train.main([*tiny, "trainer.epochs=1"])
    ckpt = run_dir_of(tmp_path / "runs") / "checkpoints" / "last.pt"
    with pytest.raises(CvtoolError, match="classes"):
        evaluate.main([f"ckpt={ckpt}", "dataset=digits", "dataset.channels=3", f"paths.runs={tmp_path / 'runs'}"])
    with pytest.raises(CvtoolError, match="1-channel|3-channel"):
        evaluate.main([f"ckpt={ckpt}", "dataset=digits", f"paths.runs={tmp_path / 'runs'}"])


def test_corrupt_image_is_named_and_skip_invalid_counts_it(tiny, tmp_path, datasets_root):
    root = tmp_path / "datasets"
    shutil.copytree(datasets_root, root)
    bad = root / "shapes" / "classification" / "train" / "circle" / "zz_corrupt.png"
    bad.write_bytes(b"\x89PNG not really")
    args = [a for a in tiny if not a.startswith("paths.datasets")] + [f"paths.datasets={root}", "trainer.epochs=1"]
    with pytest.raises(CvtoolError, match="zz_corrupt.png"):
        train.main(args)
    result, = train.main([*args, "data.skip_invalid=true"])
    assert result["epochs"] == 1


def test_engine_options_amp_channels_last_ema_accumulation_and_clipping(tiny, tmp_path):
    """bf16 autocast (on CPU), channels_last, EMA, grad accumulation and clipping all go through one loop."""
    result, = train.main([*tiny, "trainer.epochs=3", "hardware.amp=bf16", "hardware.channels_last=true",
                          "trainer.ema.enabled=true", "trainer.ema.decay=0.9", "trainer.grad_accum=2",
                          "trainer.clip_grad_norm=1.0"])
    run = run_dir_of(tmp_path / "runs")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert "n_averaged" in state["hooks"]["ema"] and state["step"] == result["steps"]
    assert result["epochs"] == 3 and result["steps"] == 3 * (180 // 30 // 2)
    metrics, = evaluate.main([f"ckpt={run / 'checkpoints' / 'best.pt'}", f"paths.runs={tmp_path / 'runs'}",
                              "hardware=cpu"])
    assert metrics["num_samples"] == 60
