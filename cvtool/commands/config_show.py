"""`cvtool config show COMMAND [OVERRIDES]`: print the composed config (nothing runs, no run dir)."""

from __future__ import annotations

from omegaconf import OmegaConf
from rich.console import Console
from rich.syntax import Syntax

from cvtool.config import runner


def main(command: str, overrides: list[str]) -> str:
    """The config with interpolations resolved (as the command will see it); unresolved where a value is missing."""
    from omegaconf.errors import OmegaConfBaseException

    cfg = runner.compose(command, overrides)
    try:
        text = OmegaConf.to_yaml(cfg, resolve=True)
    except OmegaConfBaseException:  # e.g. an interpolation of a required (???) value
        text = OmegaConf.to_yaml(cfg)
    Console().print(Syntax(text, "yaml", background_color="default"))
    return text
