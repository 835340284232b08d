"""`cvtool config show COMMAND [OVERRIDES]`: print the composed config (nothing runs, no run dir)."""

from __future__ import annotations

from omegaconf import OmegaConf
from rich.console import Console
from rich.syntax import Syntax

from cvtool.config import runner


def main(command: str, overrides: list[str]) -> str:
    text = OmegaConf.to_yaml(runner.compose(command, overrides))
    Console().print(Syntax(text, "yaml", background_color="default"))
    return text
