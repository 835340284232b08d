"""Sweeps as submitit jobs (the `slurm` extra), tested with the local executor, which starts real processes:
one job per sweep point, a job of several tasks is one DDP process group, results come from the job returns."""

from __future__ import annotations

import json
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
        "hydra/launcher=local", "trainer.epochs=1", "trainer.tensorboard=false"]


def test_a_two_point_sweep_runs_two_jobs_and_returns_their_results(local_sweep, tmp_path):
    results = train.main([*local_sweep, "optim.lr=0.01,0.02"], multirun=True)
    assert len(results) == 2 and all(r["epochs"] == 1 and r["world_size"] == 1 for r in results)
    sweep, = (tmp_path / "runs" / "classification" / "multirun").iterdir()
    for job, result in zip(("0", "1"), results, strict=True):
        assert json.loads((sweep / job / "metrics.json").read_text())["best"] == result["best"]
    assert ["optim.lr=0.02" in (sweep / job / ".hydra" / "overrides.yaml").read_text() for job in "01"] == [
        False, True]  # one job per learning rate


def test_a_job_of_two_tasks_is_one_two_process_ddp_run(local_sweep, tmp_path):
    result, = train.main([*local_sweep, "hydra.launcher.tasks_per_node=2", "optim.lr=0.01"], multirun=True)
    assert result["world_size"] == 2
    sweep, = (tmp_path / "runs" / "classification" / "multirun").iterdir()
    assert [p.name for p in sweep.iterdir() if not p.name.startswith(".") and p.is_dir()] == ["0"]
    assert json.loads((sweep / "0" / "metrics.json").read_text())["world_size"] == 2
    outcomes = [pickle.loads(p.read_bytes()) for p in sorted(sweep.glob(".submitit/*/*_result.pkl"))]
    returns = [value._return_value for status, value in outcomes if status == "success"]
    for r in returns:
        del r["train_time_s"]
    assert len(returns) == 2 and returns[0] == returns[1]  # rank 1 trained the same model in lock-step


def test_a_missing_submitit_plugin_names_the_extra_to_install(tiny):
    with mock.patch.object(config_errors, "_has_submitit_plugin", return_value=False):
        with pytest.raises(CvtoolError, match=r"pip install 'cvtool\[slurm\]'"):
            train.main([*tiny, "hydra/launcher=submitit_nothere", "trainer.epochs=1"], multirun=True)
