"""Run-dir metric records: metrics.jsonl (one JSON object per record) and TensorBoard scalars."""

from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLogger:
    """Appends records to `run_dir/metrics.jsonl` and mirrors numeric values to TensorBoard.

    With `run_dir=None` (DDP ranks > 0) it writes nothing.
    """

    def __init__(self, run_dir: Path | None, tensorboard: bool):
        self.path = run_dir / "metrics.jsonl" if run_dir else None
        self.writer = None
        if run_dir and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

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
