"""Pretrained weights: torchvision weight enums (from the torch hub cache) and local weight files."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import nn
from torchvision.models import WeightsEnum, get_model_weights

from cvtool.engine.checkpoint import model_weights, read_torch_file
from cvtool.errors import CvtoolError

log = logging.getLogger(__name__)

_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def is_weights_file(weights: str) -> bool:
    """True when ``weights`` names a local file rather than a pretrained-weights enum such as ``DEFAULT``."""
    return weights.endswith(_FILE_SUFFIXES) or "/" in weights or os.sep in weights or Path(weights).is_file()


def resolve_weights(model_name: str, weights: str) -> WeightsEnum:
    """``DEFAULT``, ``IMAGENET1K_V1`` or ``ResNet18_Weights.IMAGENET1K_V1`` -> torchvision's weights enum."""
    enum_cls = get_model_weights(model_name)
    member = weights.removeprefix(f"{enum_cls.__name__}.")
    if member == "DEFAULT" or member in enum_cls.__members__:
        return enum_cls[member]
    valid = ["DEFAULT", *enum_cls.__members__, *(f"{enum_cls.__name__}.{m}" for m in enum_cls.__members__)]
    raise CvtoolError(
        f"unknown pretrained weights {weights!r} for model {model_name}",
        fix=f"use one of {', '.join(valid)} or a local file path",
    )


def ensure_cached(weights: WeightsEnum) -> None:
    """Download ``weights`` into the torch hub cache unless it is there; no network -> CvtoolError."""
    filename = os.path.basename(urlparse(weights.url).path)
    model_dir = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(model_dir, filename)
    if os.path.exists(cached):
        return
    match = torch.hub.HASH_REGEX.search(filename)
    try:
        os.makedirs(model_dir, exist_ok=True)
        torch.hub.download_url_to_file(weights.url, cached, match.group(1) if match else None, progress=False)
    except (URLError, OSError, RuntimeError) as err:
        raise CvtoolError(
            f"could not download pretrained weights {weights} (no network?)",
            where=str(err),
            fix=f"put {filename} into {model_dir} or pass weights=PATH to a local file",
        ) from err


def pretrained(model_name: str, weights: str | None) -> WeightsEnum | None:
    """The torchvision weights enum `weights` names for `model_name` (cached first; no network -> CvtoolError)."""
    if weights is None:
        return None
    resolved = resolve_weights(model_name, weights)
    ensure_cached(resolved)
    return resolved


def reject_weights_name(model_name: str, weights: str | None) -> None:
    """Our own models have no published weights: only a local file (handled by create_model) is valid."""
    if weights is not None:
        raise CvtoolError(
            f"model {model_name} has no pretrained weights named {weights!r}",
            fix="pass weights=PATH to a local .pt file (a state dict or a cvtool checkpoint) or weights=null",
        )


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a raw state dict or of a cvtool checkpoint (the weights it deploys: EMA when kept) at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise CvtoolError("weights file not found", where=str(path), fix="check the weights=PATH value")
    obj = read_torch_file(path, "weights file", "pass a state dict or cvtool checkpoint saved with torch.save")
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = model_weights(obj)
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CvtoolError(
            "weights file holds no state dict",
            where=str(path),
            fix="save model.state_dict() or a cvtool checkpoint",
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _listed(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


def load_weights_file(model: nn.Module, path: str | os.PathLike) -> int:
    """Copy the tensors of ``path`` whose names and shapes match into ``model``; returns how many matched.

    Tensors of another shape (typically the head of another class count) keep the model's fresh initialisation and
    tensors the model lacks are skipped, all said in one log line. A file matching fewer than half of the model's
    tensors belongs to another architecture, which is an error.
    """
    source = read_state_dict(path)
    target = model.state_dict()
    matched = {k: v for k, v in source.items() if k in target and v.shape == target[k].shape}
    reinitialised = [k for k in source if k in target and k not in matched]
    skipped = [k for k in source if k not in target]
    if len(matched) < len(target) / 2:
        raise CvtoolError(
            f"weights file matches only {len(matched)} of the model's {len(target)} tensors "
            f"({len(reinitialised)} have other shapes, {len(skipped)} are not in the model)",
            where=str(path),
            fix="it was saved from another architecture; pick the matching model= or another file",
        )
    model.load_state_dict(matched, strict=False)
    report = f"weights {path}: loaded {len(matched)}/{len(target)} tensors"
    if reinitialised:
        report += f"; re-initialised (shape differs): {_listed(reinitialised)}"
    if skipped:
        report += f"; skipped (not in model): {_listed(skipped)}"
    absent = [k for k in target if k not in source]
    if absent:
        report += f"; not in file (as initialised): {_listed(absent)}"
    log.info(report)
    return len(matched)
