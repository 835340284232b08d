"""Which run directory a `cvtool train` belongs to, so a restarted or requeued job finds its own state again.

`name=NAME` names it (runs/<task>/train/NAME). Without a name, `resume=auto` asks the launcher: the SLURM job
(array jobs: <array job>_<task>), a submitit local job, or torchrun's rendezvous (TORCHELASTIC_RUN_ID); rank 0
writes down the directory it chose under runs/<task>/train/.launches/<id> on the first attempt, and every later
attempt with the same id reads it back.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write_text
from cvtool.utils.distributed import slurm_job_id

log = logging.getLogger("cvtool.train")

LAUNCHES = ".launches"


def launcher_id(env: dict | None = None) -> str | None:
    """The launcher's identity of this job, stable across its restarts (None outside a launcher)."""
    env = os.environ if env is None else env
    if slurm := slurm_job_id(env):
        return f"slurm-{slurm}"
    if env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"submitit-{env['SUBMITIT_LOCAL_JOB_ID']}"
    if env.get("TORCHELASTIC_RUN_ID"):
        return f"torchrun-{env['TORCHELASTIC_RUN_ID']}"
    return None


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise CvtoolError(f"name={name!r} is not a directory name", where="name",
                          fix="use letters, digits, '-', '_' (e.g. name=resnet50-lr0.1)")


def run_dir_for(task_dir: Path, name: str | None, auto: bool) -> Path | None:
    """The run directory of this run: runs/<task>/train/NAME, or (with resume=auto under a launcher) the one
    recorded for the launcher's job id, recording a new one on the first attempt. None: Hydra's timestamp dir."""
    if name is not None:
        check_name(name)
        return task_dir / name
    job = launcher_id() if auto else None
    if job is None:
        return None
    record = task_dir / LAUNCHES / job
    if record.is_file():
        return task_dir / record.read_text().strip()
    chosen = f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{job}"
    if is_rank0():
        atomic_write_text(record, chosen + "\n")
    return task_dir / chosen


def other_task_run(runs: Path, task: str, name: str) -> str | None:
    """The task whose runs/<task>/train/NAME already holds a checkpoint, other than `task` (None if none)."""
    for found in sorted(runs.glob(f"*/train/{name}/checkpoints/last.pt")):
        other = found.parents[3].name
        if other != task:
            return other
    return None
