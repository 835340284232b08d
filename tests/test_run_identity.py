"""Restart-safe training: a stable run identity, resume-or-start, mid-epoch checkpoints, exact resume (also on
another number of processes), pre-emption signals and SLURM requeue."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cvtool.commands import train
from cvtool.commands.run_identity import launcher_id
from cvtool.data.samplers import ResumableSampler
from cvtool.engine import hooks
from cvtool.errors import CvtoolError, ExitRequest

LAUNCHER_ENV = ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SUBMITIT_LOCAL_JOB_ID",
                "TORCHELASTIC_RUN_ID")


@pytest.fixture
def no_launcher(monkeypatch):
    for key in LAUNCHER_ENV:
        monkeypatch.delenv(key, raising=False)


def weights(path: Path) -> dict:
    return torch.load(path, weights_only=True)["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def steps(run: Path) -> list[tuple[int, str]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], "val" if any(k.startswith("val/") for k in r) else "train") for r in records]


def test_launcher_ids_are_stable_per_job():
    assert launcher_id({"SLURM_JOB_ID": "7", "TORCHELASTIC_RUN_ID": "x"}) == "slurm-7"
    assert launcher_id({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "3"}) == "slurm-7_3"
    assert launcher_id({"SUBMITIT_LOCAL_JOB_ID": "12"}) == "submitit-12"
    assert launcher_id({"TORCHELASTIC_RUN_ID": "abc"}) == "torchrun-abc"
    assert launcher_id({}) is None


def test_named_run_resumes_or_starts_and_refuses_what_it_must(tiny, tmp_path, no_launcher):
    args = [*tiny, "trainer.epochs=1", "name=exp"]
    result, = train.main([*args, "resume=auto"])  # nothing to resume: starts it
    run = tmp_path / "runs" / "classification" / "train" / "exp"
    assert (run / "metrics.json").is_file() and result["epochs"] == 1
    with pytest.raises(CvtoolError, match="already finished its 1 epochs"):
        train.main([*args, "resume=auto"])
    with pytest.raises(CvtoolError, match="already holds a checkpoint"):
        train.main(args)
    with pytest.raises(CvtoolError, match="is a shapes_cnn run, not model=lenet5"):
        train.main([*args, "model=lenet5", "resume=auto"])
    with pytest.raises(CvtoolError, match="name=exp is a classification run"):
        train.main([*args, "task=segmentation", "resume=auto"])
    with pytest.raises(CvtoolError, match="not a directory name"):
        train.main([*tiny, "name=../x"])
    train.main([*tiny, "trainer.epochs=1", "resume=auto"])  # no name, no launcher: a new (timestamped) run
    assert len(list((tmp_path / "runs" / "classification" / "train").iterdir())) == 2


def test_a_launcher_job_finds_its_run_dir_again(tiny, tmp_path, no_launcher, monkeypatch):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job42")
    args = [*tiny, "trainer.epochs=2", "resume=auto"]
    with pytest.raises(ExitRequest):
        train.main([*args, "trainer.stop_after=1"])
    train.main(args)  # the same command (as a restart runs it) continues the run
    task_dir = tmp_path / "runs" / "classification" / "train"
    runs = [p for p in task_dir.iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1 and runs[0].name.endswith("_torchrun-job42")
    assert (task_dir / ".launches" / "torchrun-job42").read_text().strip() == runs[0].name
    assert json.loads((runs[0] / "metrics.json").read_text())["epochs"] == 2


def test_a_crash_mid_epoch_resumes_from_the_checkpoint_before_it_exactly(tiny, tmp_path, no_launcher, monkeypatch):
    common = [*tiny, "deterministic=true", "trainer.epochs=2", "data.workers=0", "trainer.log_every=1"]
    train.main([*common, "name=whole"])
    task_dir = tmp_path / "runs" / "classification" / "train"
    whole = weights(task_dir / "whole" / "checkpoints" / "last.pt")
    save = hooks.CheckpointHook.after_step

    def crash_after_step_8(self, trainer, outputs):
        save(self, trainer, outputs)
        if trainer.step == 8:
            raise KeyboardInterrupt  # stands in for a killed process: nothing else is saved

    monkeypatch.setattr(hooks.CheckpointHook, "after_step", crash_after_step_8)
    args = [*common, "name=crashed", "trainer.checkpoint_every=2", "resume=auto"]
    with pytest.raises(KeyboardInterrupt):
        train.main(args)
    monkeypatch.setattr(hooks.CheckpointHook, "after_step", save)
    checkpoints = task_dir / "crashed" / "checkpoints"
    assert torch.load(checkpoints / "last.pt", weights_only=True)["step"] == 8  # 6 steps per epoch: mid-epoch
    assert torch.load(checkpoints / "last.prev.pt", weights_only=True)["step"] == 6
    train.main(args)
    assert same_weights(whole, weights(checkpoints / "last.pt"))
    assert steps(task_dir / "crashed") == steps(task_dir / "whole")  # every record once, none missing
    # a last.pt torn by the crash: the previous one takes over, said in one line
    (checkpoints / "last.pt").write_bytes(b"PK\x03\x04 torn")
    (checkpoints / "last.prev.pt").write_bytes((task_dir / "whole" / "checkpoints" / "last.pt").read_bytes())
    with pytest.raises(CvtoolError, match="already finished"):
        train.main(args)


def test_the_sampler_continues_with_the_unseen_samples_on_any_number_of_ranks():
    data = list(range(23))
    for world in (1, 2, 3):
        for rank in range(world):
            sampler = ResumableSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=5)
            sampler.set_epoch(1)
            full = list(sampler)
            assert full == list(sampler.inner)  # torch's DistributedSampler order
            for k in range(len(full) + 1):
                sampler.set_epoch(1, skip=k * world)
                assert list(sampler) == full[k:] and len(sampler) == len(full) - k
    seen = []
    for rank in range(2):  # 2 ranks consumed 4 samples each, then the run resumes on 3
        sampler = ResumableSampler(data, num_replicas=2, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(1)
        seen += list(sampler)[:4]
    rest = []
    for rank in range(3):
        sampler = ResumableSampler(data, num_replicas=3, rank=rank, shuffle=True, seed=5)
        sampler.set_epoch(1, skip=8)
        rest.append(list(sampler))
    assert len({len(r) for r in rest}) == 1  # equal shares: no rank waits for another
    assert sorted(set(seen) | {i for r in rest for i in r}) == data and not set(seen) & set(rest[0][:3])


def test_a_changed_world_size_is_refused_unless_allowed(tiny, tmp_path, no_launcher):
    args = [*tiny, "trainer.epochs=2", "name=w", "resume=auto"]
    with pytest.raises(ExitRequest):
        train.main([*args, "trainer.stop_after=1"])
    last = tmp_path / "runs" / "classification" / "train" / "w" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["world_size"] == 1
    state.update(world_size=2, epoch_offset=0)  # as if 2 processes had written it
    torch.save(state, last)
    with pytest.raises(CvtoolError, match="trained on 2 process"):
        train.main(args)
    result, = train.main([*args, "trainer.allow_world_size_change=true"])
    assert result["epochs"] == 2


def wait_for_records(path_glob: Path, pattern: str, count: int, timeout: float = 120) -> Path:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(path_glob.glob(pattern))
        if found and found[0].read_text().count("\n") >= count:
            return found[0]
        time.sleep(0.2)
    raise AssertionError("training did not start")


@pytest.mark.parametrize("scontrol_exit", [pytest.param(0, marks=pytest.mark.slow), 1])  # (exact resume: covered
# by the crash and torchrun tests; the requeue call by both variants)
def test_sigusr1_saves_requeues_the_slurm_job_once_and_the_same_command_finishes(tiny, tmp_path, scontrol_exit):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n'
                                      + ('echo "slurm_requeue error: Job is pending" >&2\n' if scontrol_exit else "")
                                      + f"exit {scontrol_exit}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", SLURM_JOB_ID="4711", SLURM_ARRAY_JOB_ID="4700",
               SLURM_ARRAY_TASK_ID="3", OMP_NUM_THREADS="1")
    args = [a for a in tiny if not a.startswith("trainer.epochs")] + [
        "trainer.epochs=3", "logger=[]", "deterministic=true", "data.workers=0", "resume=auto"]
    proc = subprocess.Popen([sys.executable, "-m", "cvtool", "train", *args], stderr=subprocess.PIPE, text=True,
                            env=env)
    wait_for_records(tmp_path / "runs", "classification/train/*/metrics.jsonl", 2)
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert calls.read_text().split("\n")[0] == "requeue 4700_3" and calls.read_text().count("requeue") == 1
    if scontrol_exit:
        assert proc.returncode == 2 and "scontrol requeue 4700_3` failed: slurm_requeue error" in stderr
        assert "Traceback" not in stderr
    else:
        assert proc.returncode == 128 + signal.SIGUSR1, stderr[-2000:]
        assert "SLURM job 4700_3 requeued" in stderr
    run = next(p for p in (tmp_path / "runs" / "classification" / "train").iterdir() if not p.name.startswith("."))
    assert 0 < torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] < 18
    if scontrol_exit:
        return
    done = subprocess.run([sys.executable, "-m", "cvtool", "train", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    whole = [a for a in args if a != "resume=auto"] + [f"paths.runs={tmp_path / 'whole'}"]
    subprocess.run([sys.executable, "-m", "cvtool", "train", *whole], check=True, capture_output=True, env=env)
    reference = next((tmp_path / "whole" / "classification" / "train").iterdir())
    assert same_weights(weights(reference / "checkpoints" / "last.pt"), weights(run / "checkpoints" / "last.pt"))


def test_a_missing_scontrol_is_one_clear_error(monkeypatch, tmp_path):
    from cvtool.engine.trainer import requeue_slurm_job

    monkeypatch.setenv("PATH", str(tmp_path))  # no scontrol anywhere
    with pytest.raises(CvtoolError, match="could not requeue SLURM job 12_3") as err:
        requeue_slurm_job("12_3")
    assert "resubmit the same command" in str(err.value)
