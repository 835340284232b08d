"""Commands whose pipelines arrive in later versions: validate the overrides, then say so clearly."""

from __future__ import annotations

from cvtool.config import runner
from cvtool.errors import CvtoolError


def main(command: str, overrides: list[str]) -> None:
    cfg = runner.compose(command.split()[0], overrides)
    raise CvtoolError(f"`cvtool {command}` is not available yet for task {cfg.task.name}",
                      where=f"cvtool {command}",
                      fix="this version provides train, eval, predict, models, config show and data synth/check")
