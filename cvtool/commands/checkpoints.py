"""Turn `resume=`/`ckpt=` into overrides: a checkpoint carries the overrides that composed its config."""

from __future__ import annotations

from pathlib import Path

from cvtool.config import runner
from cvtool.errors import CvtoolError

# stored overrides that describe the model and its data (kept when a checkpoint is evaluated or predicted with)
MODEL_KEYS = ("task", "model", "dataset")


def value_of(overrides: list[str], key: str) -> str | None:
    for item in reversed(overrides):
        if item.startswith(f"{key}="):
            value = item.split("=", 1)[1].strip("'\"")
            return None if value in ("null", "None", "") else value
    return None


def without(overrides: list[str], *keys: str) -> list[str]:
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in keys and not o.startswith("hydra.")]


def quoted(key: str, value: str | Path) -> str:
    return f"{key}='{value}'"


def latest_checkpoint(task_dir: Path) -> Path:
    found = sorted(task_dir.glob("*/checkpoints/last.pt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise CvtoolError("resume=auto found no earlier run to resume", where=str(task_dir),
                          fix="train first, or pass resume=PATH to a checkpoint")
    return found[-1]


def resume_overrides(overrides: list[str]) -> list[str]:
    """resume=PATH|DIR|auto -> the run's own overrides, then the user's, continuing in the same run dir."""
    value = value_of(overrides, "resume")
    if value is None:
        return overrides
    from cvtool.engine.checkpoint import load_checkpoint, resolve_checkpoint_path

    user = without(overrides, "resume")
    if value == "auto":
        cfg = runner.compose("train", user)
        path = latest_checkpoint(Path(cfg.paths.runs) / cfg.task.name / "train")
    else:
        path = resolve_checkpoint_path(value)
    state = load_checkpoint(path, lazy=True)
    stored = without(state.get("overrides", []), "resume", "command", "trainer.stop_after")
    run_dir = path.resolve().parent.parent
    return [*stored, *user, quoted("resume", path), quoted("hydra.run.dir", run_dir)]


def checkpoint_overrides(overrides: list[str]) -> list[str]:
    """ckpt=PATH (or model_file=PATH, an exported model) -> the task/model/dataset overrides it was trained with
    first, so the user need not repeat them.

    A group the user chooses anew (e.g. dataset=digits) drops the stored overrides of that group.
    """
    value, exported = value_of(overrides, "ckpt"), value_of(overrides, "model_file")
    if value is not None:
        from cvtool.engine.checkpoint import load_checkpoint

        state = load_checkpoint(value, lazy=True)
    elif exported is not None:  # an exported model's sidecar JSON carries the same overrides
        from cvtool.export.runtime import read_sidecar

        state = read_sidecar(exported)
    else:
        return overrides
    chosen = {o.split("=", 1)[0] for o in overrides if o.split("=", 1)[0] in MODEL_KEYS}
    stored = [o for o in state.get("overrides", [])
              if (group := o.split("=", 1)[0].split(".")[0].lstrip("+")) in MODEL_KEYS and group not in chosen]
    return [*stored, *overrides]


def check_compatible(state: dict, task: str, class_names: list[str] | None) -> None:
    """A checkpoint must match the task and the dataset's classes it is used with."""
    where = state.get("path")
    if state["task"] != task:
        raise CvtoolError(f"checkpoint is a {state['task']} model but task={task}", where=where,
                          fix=f"use task={state['task']} or a {task} checkpoint")
    if class_names is not None and list(state["class_names"]) != list(class_names):
        theirs = state["class_names"]
        raise CvtoolError(f"checkpoint has {len(theirs)} classes {list(theirs)[:8]} but the dataset has "
                          f"{len(class_names)} {list(class_names)[:8]}", where=where,
                          fix="use the dataset the model was trained on (same classes) or train a new model")
