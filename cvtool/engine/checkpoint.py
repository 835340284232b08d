"""Checkpoint files: plain dicts of tensors and Python types, written atomically, read with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import torch

from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write

REQUIRED_KEYS = ("model", "config", "task", "class_names")
CHECKPOINT_FIX = "pass a checkpoint written by `cvtool train` (checkpoints/last.pt or best.pt)"
PREVIOUS = "last.prev.pt"  # the last.pt before the newest (a resume falls back to it when last.pt is unreadable)
ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6 is a zip archive


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write `state` to `path` atomically (an interrupted write never leaves a half file in place)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept a checkpoint file or a run dir (-> its checkpoints/last.pt)."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "last.pt", path / "last.pt"):
            if candidate.is_file():
                return candidate
        raise CvtoolError("no checkpoint found in directory", where=str(path),
                          fix="pass a .pt file or a run dir containing checkpoints/last.pt")
    if not path.is_file():
        raise CvtoolError("checkpoint file not found", where=str(path),
                          fix="check the path (runs/<task>/train/<timestamp>/checkpoints/last.pt or best.pt)")
    return path


def read_torch_file(path: Path, kind: str, fix: str, map_location: str | torch.device = "cpu",
                    mmap: bool = False):
    """`torch.load` of a file the user named (`kind`: "checkpoint", "weights file"), tensors and plain types only
    (weights_only=True: never unpickles arbitrary objects). A file that is not torch.save's zip archive (a text
    file, a legacy pickle) or does not load is a CvtoolError naming it."""
    with open(path, "rb") as f:
        magic = f.read(len(ZIP_MAGIC))
    if magic != ZIP_MAGIC:
        raise CvtoolError(f"not a cvtool/PyTorch {kind}: the file is not the zip archive torch.save writes",
                          where=str(path), fix=f"{fix}; files saved by PyTorch < 1.6 or with "
                          "_use_new_zipfile_serialization=False must be re-saved with torch.save")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - any failure here means the file is not a usable torch file
        raise CvtoolError(f"{kind} is corrupt or truncated, or holds more than tensors: "
                          f"{str(exc).splitlines()[0].split('. ')[0][:160]}", where=str(path), fix=fix) from exc


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", lazy: bool = False) -> dict:
    """Load and validate a cvtool checkpoint (never unpickles arbitrary objects).

    `lazy=True` memory-maps the tensors: reading only the metadata (config, overrides) then costs no tensor I/O.
    """
    path = resolve_checkpoint_path(path)
    state = read_torch_file(path, "checkpoint", CHECKPOINT_FIX, map_location, mmap=lazy)
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
        raise CvtoolError(f"not a cvtool checkpoint (missing {', '.join(missing)})", where=str(path),
                          fix=CHECKPOINT_FIX)
    state["path"] = str(path)
    return state


def model_weights(state: dict) -> dict:
    """The weights to deploy: the EMA average when the run kept one (validation used it), else the raw model."""
    ema = state.get("hooks", {}).get("ema")
    if ema:
        return {key[len("module."):]: value for key, value in ema.items() if key.startswith("module.")}
    return state["model"]
