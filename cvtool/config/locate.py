"""Where the shipped config tree lives (inside the wheel, or next to the package in a source checkout)."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """The `conf/` directory: `cvtool/conf` in an installed wheel, `<repo>/conf` in a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "conf", package.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"cvtool's config tree was not found next to {package}")


GROUPS = ("task", "model", "dataset", "hardware", "optim", "sched", "experiment", "debug")


def group_choices(group: str) -> list[str]:
    """Names of the configs in a config group (file listing only: cheap enough for --help)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))
