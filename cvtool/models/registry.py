"""The model registry: the one place where a model name becomes an ``nn.Module`` (timm-style)."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cvtool.errors import CvtoolError
from cvtool.models.freezing import freeze as apply_freeze
from cvtool.models.weights import is_weights_file, load_weights_file

TASKS = ("classification", "detection", "segmentation", "keypoints", "embedding", "text")
# Every builder takes these; everything else it accepts is a model-specific keyword argument.
_COMMON_ARGS = ("num_classes", "in_channels", "weights")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    task: str  # "classification" | "detection" | "segmentation" | "keypoints"
    builder: Callable[..., nn.Module]
    min_size: int  # smallest square input side that works
    description: str


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(name: str, *, task: str, min_size: int, description: str) -> Callable:
    """Decorator registering ``builder(num_classes, in_channels=3, weights=None, **kwargs)`` as ``name``."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered (by {_REGISTRY[name].builder!r})")
        _REGISTRY[name] = ModelInfo(name, task, builder, min_size, description)
        return builder

    return decorator


def model_info(name: str) -> ModelInfo:
    """Registry entry of ``name``; an unknown name lists the valid ones, closest first."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    names = sorted(_REGISTRY)
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    ordered = close + [n for n in names if n not in close]
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise CvtoolError(f"unknown model {name!r}", fix=f"{hint}valid models: {', '.join(ordered)}")


def list_models(pattern: str = "*", task: str | None = None) -> list[str]:
    """Registered names matching the fnmatch ``pattern`` (and ``task`` when given), sorted."""
    return sorted(
        name
        for name, info in _REGISTRY.items()
        if fnmatch.fnmatchcase(name, pattern) and (task is None or info.task == task)
    )


def builder_kwargs(name: str) -> dict[str, object] | None:
    """Model-specific keyword arguments of ``name``'s builder with their defaults (None: accepts any)."""
    params = inspect.signature(model_info(name).builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return {p.name: p.default for p in params if p.name not in _COMMON_ARGS}


def create_model(
    name: str,
    *,
    num_classes: int,
    in_channels: int = 3,
    weights: str | None = None,
    input_size: int | list[int] | tuple[int, int] | None = None,
    freeze: str | int | list | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build ``name``. ``weights``: a pretrained-weights name or a local file; ``input_size`` (a side or (H, W)) is
    checked, and passed on to builders that take it (their smallest input depends on their options); ``freeze``:
    `model.freeze`, applied after the weights are loaded (cvtool.models.freezing)."""
    info = model_info(name)
    accepted = builder_kwargs(name)
    for key in kwargs:
        if accepted is not None and key not in accepted:
            raise CvtoolError(
                f"model {name} has no option {key!r}",
                fix=f"{info.builder.__name__} accepts: {', '.join(sorted(accepted)) or 'no options'}",
            )
    side = min(input_size) if isinstance(input_size, list | tuple) else input_size
    if side is not None and side < info.min_size:
        raise CvtoolError(
            f"model {name} needs inputs of at least {info.min_size} px, got {input_size}",
            fix="use a larger dataset image size (dataset.image_size=...) or another model, "
            "e.g. resnet18 with model.small_input=true",
        )
    if accepted is not None and "input_size" in accepted:
        kwargs["input_size"] = input_size
    if weights is not None and is_weights_file(weights):
        model = info.builder(num_classes, in_channels, None, **kwargs)
        load_weights_file(model, weights)
    else:
        model = info.builder(num_classes, in_channels, weights, **kwargs)
    return apply_freeze(model, freeze, classifier=info.task == "classification")


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (trainable or not)."""
    return sum(p.numel() for p in model.parameters())
