"""DistributedDataParallel on CPU: two gloo processes under torchrun train in lock-step, rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).parent


def test_two_process_gloo_ddp_ends_with_identical_weights_and_one_run_dir(tiny, tmp_path):
    args = [a for a in tiny if not a.startswith("hardware=")] + ["hardware=ddp", "trainer.epochs=1",
                                                                  "logger=[]"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_worker.py"), str(tmp_path), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={
        **__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    runs = list((tmp_path / "runs" / "classification" / "train").iterdir())
    assert len(runs) == 1
    metrics = __import__("json").loads((runs[0] / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["final"]["num_samples"] == 60  # every val image counted once
    state = torch.load(runs[0] / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.equal(state["model"][k], rank0[k]) for k in rank0)


def test_torchrun_restarts_a_killed_worker_and_the_run_resumes_in_place_exactly(tiny, tmp_path):
    args = [a for a in tiny if not a.startswith(("hardware=", "paths.runs="))] + [
        "hardware=ddp", "trainer.epochs=2", "logger=[]", "deterministic=true", "trainer.log_every=1",
        "trainer.checkpoint_every=1", "resume=auto"]  # 180 images, 2 x 30 per step: 3 steps per epoch
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    whole = subprocess.run([*torchrun, str(HERE / "ddp_worker.py"), str(tmp_path), *args,
                            f"paths.runs={tmp_path / 'whole'}"], capture_output=True, text=True, timeout=300, env=env)
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed = subprocess.run([*torchrun, "--max-restarts=2", str(HERE / "ddp_kill_worker.py"), "4", *args,
                             f"paths.runs={tmp_path / 'killed'}"], capture_output=True, text=True, timeout=300,
                            env=env)
    assert killed.returncode == 0, killed.stderr[-3000:]
    assert "exitcode: -9" in killed.stderr  # torchrun saw the worker die by SIGKILL, and restarted the group
    runs = [p for p in (tmp_path / "killed" / "classification" / "train").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1  # the restart found the first attempt's run dir (torchrun's run id)
    reference, = [p for p in (tmp_path / "whole" / "classification" / "train").iterdir() if not p.name.startswith(".")]
    a = torch.load(reference / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(runs[0] / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (runs[0] / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    key = [(r["step"], "val/top1" in r) for r in records]
    assert key == [(r["step"], "val/top1" in r) for r in expected] and len(set(key)) == len(key) == 8


def test_evaluators_reduce_over_ranks_to_the_single_process_metrics(tmp_path):
    from ddp_eval_worker import evaluate_all

    out = tmp_path / "metrics.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "ddp_eval_worker.py"), str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={
        **__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    single = __import__("json").loads(__import__("json").dumps(evaluate_all(0, 1)))
    assert __import__("json").loads(out.read_text()) == single
    assert single["seg"]["num_pixels"] > 0 and single["voc"]["voc10"]["mAP"] > 0.2 and single["coco"]["bbox"]["AP"] > 0
