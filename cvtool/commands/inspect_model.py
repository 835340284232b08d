"""`cvtool inspect model=NAME [input_size=H,W]` (or ckpt=PATH): a per-layer table of output shapes, parameters,
multiply-adds and receptive fields, with totals; `json=PATH` also writes it as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvtool.config import runner
from cvtool.errors import CvtoolError
from cvtool.models.summary import Summary, summarize
from cvtool.utils.atomic import atomic_write_text

from . import components as C
from .checkpoints import checkpoint_overrides, value_of


def input_size(cfg: DictConfig, default=None) -> tuple[int, int]:
    """`input_size` as (H, W): one number is a square; null = `default`, else the task's reference input."""
    value = cfg.input_size if cfg.input_size is not None else default or cfg.task.reference_input
    sizes = [value] if isinstance(value, (int, str)) else list(value)
    try:
        sizes = [int(s) for part in sizes for s in str(part).replace("x", ",").split(",") if s.strip()]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise CvtoolError(f"input_size={value} is not a size", where="input_size", fix="give H,W or one number")
    return (sizes[0], sizes[-1])


def build(cfg: DictConfig) -> tuple[torch.nn.Module, str]:
    """The model to inspect: a checkpoint's, or `model=` built for the reference (or given) class count."""
    if cfg.ckpt:
        from .restore import restore

        cfg.hardware.device, cfg.hardware.channels_last = "cpu", False
        model, _, classes, state = restore(cfg, C.setup(cfg))
        return model, f"{state['path']} ({len(classes)} classes)"
    num_classes = cfg.inspect.num_classes or cfg.task.reference_classes
    task = C.task_from(cfg)
    model = task.build_model(C.plain(cfg.model) | {"weights": None}, int(num_classes))
    return model, f"{cfg.model.name} ({num_classes} classes)"


def probe(task: str, channels: int, size: tuple[int, int], model: torch.nn.Module | None = None):
    """A probe input as the task's models take it: a batch of one, or a list of one image for detectors
    (torchvision's R-CNNs of any task, Keypoint R-CNN included)."""
    image = torch.rand(channels, *size)
    return [image] if task == "detection" or hasattr(model, "roi_heads") else image[None]


def _count(n: int) -> str:
    return "" if n == 0 else f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else \
        f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def _pair(value) -> str:
    if value is None:
        return "-"
    h, w = (f"{v:g}" for v in value)
    return h if h == w else f"{h}x{w}"


def table(summary: Summary, title: str) -> Table:
    out = Table(title=escape(title))
    out.add_column("layer")
    out.add_column("type")
    for column in ("output", "params", "mult-adds", "receptive field", "stride"):
        out.add_column(column, justify="right")
    for layer in summary.layers:
        calls = f" x{layer.calls}" if layer.calls > 1 else ""
        out.add_row(escape(layer.name), layer.kind + calls, "x".join(map(str, layer.shape or ())) or "-",
                    _count(layer.params), _count(layer.macs), _pair(layer.rf), _pair(layer.stride))
    out.add_section()
    out.add_row("[bold]total", "", f"{summary.input_size[0]}x{summary.input_size[1]} in",
                f"[bold]{_count(summary.params)}", f"[bold]{_count(summary.macs)}", "", "")
    return out


def inspect(cfg: DictConfig) -> Summary:
    size = input_size(cfg)
    model, title = build(cfg)
    try:
        summary = summarize(model.cpu(), probe(cfg.task.name, cfg.dataset.channels, size, model),
                            depth=cfg.inspect.depth)
    except RuntimeError as err:
        raise CvtoolError(f"{title} does not run on a {size[0]}x{size[1]} input: {str(err).splitlines()[0]}",
                          where="input_size", fix="give an input size the model takes, e.g. input_size=224,224"
                          ) from err
    console = Console()
    if not console.is_terminal:  # a log or a pipe: full layer names rather than an 80-column cut
        console = Console(width=150)
    console.print(table(summary, f"{title} at {size[0]}x{size[1]}"))
    if cfg.json:
        atomic_write_text(cfg.json, json.dumps(asdict(summary), indent=2))
    return summary


def with_models_task(overrides: list[str]) -> list[str]:
    """model=NAME without task=: the task NAME is registered for (`cvtool inspect model=unet` is a segmenter)."""
    from cvtool.models import list_models, model_info

    name = value_of(overrides, "model")
    if value_of(overrides, "task") or value_of(overrides, "ckpt") or name not in list_models():
        return overrides
    return [f"task={model_info(name).task}", *overrides]


def main(overrides: list[str]) -> Summary:
    return inspect(runner.compose("inspect", checkpoint_overrides(with_models_task(overrides))))
