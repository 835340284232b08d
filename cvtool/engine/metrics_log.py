"""Run-dir metric records: metrics.jsonl (one JSON object per record) and TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cvtool.utils.atomic import atomic_write_text


class MetricsLogger:
    """Appends records to `run_dir/metrics.jsonl` and mirrors numeric values to TensorBoard.

    With `run_dir=None` (DDP ranks > 0) it writes nothing.
    """

    def __init__(self, run_dir: Path | None, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl" if run_dir else None
        self.writer = None
        self.tensorboard_dir = run_dir / "tensorboard" if run_dir and tensorboard else None
        if self.tensorboard_dir:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.tensorboard_dir))

    def resume_at(self, step: int) -> None:
        """Drop the records a resumed run will write again (those after its checkpoint's `step`), so every step
        is recorded once."""
        if self.path is not None and self.path.is_file():
            kept = [r for r in read_records(self.path) if r.get("step", 0) <= step]
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        if self.writer:
            from torch.utils.tensorboard import SummaryWriter

            self.writer.close()
            self.writer = SummaryWriter(log_dir=str(self.tensorboard_dir), purge_step=step + 1)

    def log(self, record: dict, step: int) -> None:
        if self.path is None:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                        and key not in ("step", "epoch"):
                    self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def read_records(path: Path) -> list[dict]:
    """Records of a metrics.jsonl file (skips a torn last line of an interrupted run)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
