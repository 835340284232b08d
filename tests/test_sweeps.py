"""Sweeps as submitit jobs (the `slurm` extra), tested with the local executor, which starts real processes:
one job per sweep point, a job of several tasks is one DDP process group, results come from the job returns."""

from __future__ import annotations

import json
import os
import pickle
from unittest import mock

import pytest

from cvtool.commands import train
from cvtool.config import errors as config_errors
from cvtool.errors import CvtoolError

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


@pytest.fixture
def local_sweep(tiny, monkeypatch) -> list[str]:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return [a for a in tiny if not a.startswith("trainer.epochs")] + [
        "hydra/launcher=local", "trainer.epochs=1", "logger=[]"]


def test_a_two_point_sweep_runs_two_jobs_and_returns_their_results(local_sweep, tmp_path):
    results = train.main([*local_sweep, "optim.lr=0.01,0.02"], multirun=True)
    assert len(results) == 2 and all(r["epochs"] == 1 and r["world_size"] == 1 for r in results)
    sweep, = (tmp_path / "runs" / "classification" / "multirun").iterdir()
    for job, result in zip(("0", "1"), results, strict=True):
        assert json.loads((sweep / job / "metrics.json").read_text())["best"] == result["best"]
    assert ["optim.lr=0.02" in (sweep / job / ".hydra" / "overrides.yaml").read_text() for job in "01"] == [
        False, True]  # one job per learning rate


DUMP_WEIGHTS = '''
import os
if os.environ.get("SUBMITIT_LOCAL_GLOBALID"):
    import torch
    from cvtool.commands import train
    build = train.build_trainer

    def spy(cfg, run_dir):  # each task saves its model's weights when training ends
        trainer, evaluation, classes = build(cfg, run_dir)
        fit = trainer.fit

        def fit_and_dump():
            fit()
            torch.save(trainer.module.state_dict(), os.path.join(os.environ["WEIGHTS_DIR"],
                                                                 f"rank{os.environ['RANK']}.pt"))
        trainer.fit = fit_and_dump
        return trainer, evaluation, classes

    train.build_trainer = spy
'''


def with_sitecustomize(tmp_path, monkeypatch, code: str) -> None:
    """`code` runs at the start of every process the jobs start."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_a_job_of_two_tasks_is_one_two_process_ddp_run(local_sweep, tmp_path, monkeypatch):
    import torch

    with_sitecustomize(tmp_path, monkeypatch, DUMP_WEIGHTS)
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path))
    result, = train.main([*local_sweep, "hydra.launcher.tasks_per_node=2", "optim.lr=0.01"], multirun=True)
    assert result["world_size"] == 2
    sweep, = (tmp_path / "runs" / "classification" / "multirun").iterdir()
    assert [p.name for p in sweep.iterdir() if not p.name.startswith(".") and p.is_dir()] == ["0"]
    assert json.loads((sweep / "0" / "metrics.json").read_text())["world_size"] == 2
    outcomes = [pickle.loads(p.read_bytes()) for p in sorted(sweep.glob(".submitit/*/*_result.pkl"))]
    returns = [value._return_value for status, value in outcomes if status == "success"]
    for r in returns:
        del r["train_time_s"]
    assert sorted(r.pop("run_dir") is None for r in returns) == [False, True]  # rank 0 wrote the run dir
    assert len(returns) == 2 and returns[0] == returns[1]  # rank 1 trained the same model in lock-step
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys() and all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert (sweep / "0" / "train.log").read_text().count("train: ImageFolder") == 1  # rank 0's log only
    saved = torch.load(sweep / "0" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(saved[k], rank0[k]) for k in rank0)


def test_a_missing_submitit_plugin_names_the_extra_to_install(tiny):
    with mock.patch.object(config_errors, "_has_submitit_plugin", return_value=False):
        with pytest.raises(CvtoolError, match=r"pip install 'cvtool\[slurm\]'"):
            train.main([*tiny, "hydra/launcher=submitit_nothere", "trainer.epochs=1"], multirun=True)


SELF_PREEMPT = '''
import os, signal
if os.environ.get("SUBMITIT_LOCAL_JOB_ID") and os.environ.get("SUBMITIT_LOCAL_GLOBALID", "0") == "0":
    from cvtool.engine import hooks
    after_step, marker = hooks.CheckpointHook.after_step, os.environ["PREEMPT_MARKER"]

    def preempted_once(self, trainer, outputs):  # the cluster's pre-emption signal, once, at step 8
        after_step(self, trainer, outputs)
        if trainer.step == 8 and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGUSR2)

    hooks.CheckpointHook.after_step = preempted_once
'''


def test_a_preempted_job_is_requeued_by_submitit_and_ends_with_the_uninterrupted_weights(local_sweep, tmp_path,
                                                                                           monkeypatch):
    import torch

    args = [*local_sweep, "trainer.epochs=3", "deterministic=true", "data.workers=0", "optim.lr=0.01"]
    train.main([*args, f"paths.runs={tmp_path / 'whole'}"], multirun=True)
    with_sitecustomize(tmp_path, monkeypatch, SELF_PREEMPT)
    monkeypatch.setenv("PREEMPT_MARKER", str(tmp_path / "preempted"))
    result, = train.main([*args, "resume=auto"], multirun=True)
    assert (tmp_path / "preempted").exists() and result["epochs"] == 3 and result["steps"] == 18

    def last(root):
        sweep, = (root / "classification" / "multirun").iterdir()
        return torch.load(sweep / "0" / "checkpoints" / "last.pt", weights_only=True), sweep

    (resumed, sweep), (whole, _) = last(tmp_path / "runs"), last(tmp_path / "whole")
    assert all(torch.equal(resumed["model"][k], whole["model"][k]) for k in whole["model"])
    logs = "".join(p.read_text() for p in sweep.glob(".submitit/*/*_log.*"))
    assert "Requeued job" in logs and "SIGUSR2 received" in logs
