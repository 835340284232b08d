"""Rich progress bars for training and inference (off when stdout is not a terminal)."""

from __future__ import annotations

import logging

from rich import get_console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("cvtool")


class TrainProgress:
    """One bar over all optimizer steps: epoch, step, loss, lr, throughput, elapsed and ETA."""

    def __init__(self, total: int, completed: int, enabled: bool):
        self.enabled = enabled and get_console().is_terminal
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[throughput]:.0f} img/s"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), console=get_console(),
            disable=not self.enabled)
        self.task = self.progress.add_task("train", total=total, completed=completed, loss=float("nan"),
                                           lr=0.0, throughput=0.0)
        self.log_lines = enabled  # epoch summaries: rank 0 only, also when no bar is shown

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def set_epoch(self, epoch: int, epochs: int) -> None:
        self.progress.update(self.task, description=f"epoch {epoch}/{epochs}")

    def advance(self) -> None:
        self.progress.advance(self.task)

    def show(self, **fields) -> None:
        self.progress.update(self.task, **fields)

    def print(self, message: str) -> None:
        if self.log_lines:
            log.info(message)


def track(iterable, total: int | None, description: str, enabled: bool = True):
    """Iterate with a transient progress bar (inference, dataset generation)."""
    console = get_console()
    if not (enabled and console.is_terminal):
        yield from iterable
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as progress:
        yield from progress.track(iterable, total=total, description=description)
