"""Run-dir metric records: metrics.jsonl (one JSON object per record), mirrored to tracking backends.

A backend (TensorBoard here, MLflow in `tracking.py`) has one small interface: `resume_at(step, state)` before
`start()`, `log(scalars, step)`, `state_dict()` (what a checkpoint keeps to continue it) and `close(status)`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

from cvtool.errors import ExitRequest
from cvtool.utils.atomic import atomic_write_text

FINISHED, KILLED, FAILED = "FINISHED", "KILLED", "FAILED"  # how a training ended (MLflow's run statuses)


class Backend(Protocol):
    def resume_at(self, step: int, state: dict) -> None: ...
    def start(self) -> None: ...
    def log(self, scalars: dict[str, float], step: int) -> None: ...
    def state_dict(self) -> dict: ...
    def close(self, status: str) -> None: ...


class MetricsLogger:
    """Appends records to `run_dir/metrics.jsonl` and mirrors their numeric values to `backends` ({name: backend}).

    With `run_dir=None` (DDP ranks > 0) it writes nothing. Use it as a context manager around training: entering
    starts the backends, leaving closes them with the status of the way training ended.
    """

    def __init__(self, run_dir: Path | None, backends: dict[str, Backend] | None = None):
        self.path = run_dir / "metrics.jsonl" if run_dir else None
        self.backends = (backends or {}) if run_dir else {}

    def resume_at(self, step: int, state: dict | None = None) -> None:
        """Drop the records a resumed run will write again (those after its checkpoint's `step`), so every step
        is recorded once; `state` is the checkpoint's `state_dict()` of this logger (each backend's part)."""
        if self.path is not None and self.path.is_file():
            kept = [r for r in read_records(self.path) if r.get("step", 0) <= step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        for name, backend in self.backends.items():
            backend.resume_at(step, (state or {}).get(name, {}))

    def __enter__(self) -> MetricsLogger:
        for backend in self.backends.values():
            backend.start()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        stopped = isinstance(error, (ExitRequest, KeyboardInterrupt, SystemExit))  # signal, stop_after, requeue
        self.close(FINISHED if error is None else KILLED if stopped else FAILED)

    def log(self, record: dict, step: int) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        values = scalars(record)
        for backend in self.backends.values():
            backend.log(values, step)

    def state_dict(self) -> dict:
        """Each backend's state a checkpoint keeps (e.g. the MLflow run id) so a resume continues it."""
        return {name: state for name, backend in self.backends.items() if (state := backend.state_dict())}

    def close(self, status: str = FINISHED) -> None:
        for backend in self.backends.values():
            backend.close(status)


class TensorBoardBackend:
    """TensorBoard event files in `directory`; a resumed run purges the events after its checkpoint's step."""

    def __init__(self, directory: Path):
        self.directory, self.purge_step, self.writer = directory, None, None

    def resume_at(self, step: int, state: dict) -> None:
        self.purge_step = step + 1

    def start(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.directory), purge_step=self.purge_step)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, step)

    def state_dict(self) -> dict:
        return {}

    def close(self, status: str) -> None:
        if self.writer:
            self.writer.close()


def scalars(record: dict) -> dict[str, float]:
    """The finite numbers of a record, without its step and epoch counters (what tracking backends plot)."""
    return {key: value for key, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and key not in ("step", "epoch")}


def read_records(path: Path) -> list[dict]:
    """Records of a metrics.jsonl file (skips a torn last line of an interrupted run)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
