"""Fine-tuning: a model's stages, module-name patterns, and `model.freeze` (fixed parameters, frozen BatchNorm).

A pattern is an fnmatch pattern matched against dotted module and parameter names (`cvtool inspect` lists them);
whatever it matches is included with everything inside it: `layer1` covers `layer1.0.conv1.weight`.
"""

from __future__ import annotations

import difflib
import fnmatch
import logging

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from cvtool.errors import CvtoolError

log = logging.getLogger(__name__)

Stage = list[str]  # names of the top-level modules (or of the `features` blocks) that make up one stage
_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
_BATCHNORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def matches(name: str, pattern: str) -> bool:
    """True when ``name`` or one of the modules it sits in matches ``pattern`` (fnmatch, case-sensitive)."""
    parts = name.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def unmatched_pattern(key: str, pattern: str, model: nn.Module) -> CvtoolError:
    """The one-line error for a pattern that matches no parameter, naming a few real module names."""
    names = [name for name, _ in model.named_modules() if name]
    close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5)
    top = [name for name, _ in model.named_children()]
    nested = next((name for name in names if "." in name), None)
    examples = top[:8] + (["..."] if len(top) > 8 else []) + ([nested] if nested else [])
    hint = f"did you mean {', '.join(close)}? " if close else ""
    return CvtoolError(f"{key} pattern {pattern!r} matches no parameter of the model", where=key,
                       fix=f"{hint}module names look like {', '.join(examples)} (`cvtool inspect` lists them)")


def _has_params(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _blocks(sequential: nn.Sequential, prefix: str) -> list[Stage]:
    """A Sequential cut after each pooling layer (VGG, AlexNet, shapes_cnn); without any, one block per child."""
    children = list(sequential.named_children())
    pooled = any(isinstance(module, _POOLS) for _, module in children)
    blocks, block = [], []
    for name, module in children:
        block.append(prefix + name)
        if not pooled or isinstance(module, _POOLS):
            blocks.append(block)
            block = []
    return [*blocks, block]


def stages(model: nn.Module) -> list[Stage]:
    """The stages of ``model``, input first, the head last (only stages with parameters; docs/fine-tuning.md).

    ResNet family (conv1 ... layer1..layer4): the stem (all before layer1), each layerN, the head (fc). A model that
    is an nn.Sequential, or has a `features` nn.Sequential: its blocks cut after each pooling layer (or one block per
    child when it has no pooling layer). Otherwise: the top-level children with parameters, in order.
    """
    children = [name for name, _ in model.named_children()]
    if "conv1" in children and "layer1" in children:
        cut = children.index("layer1")
        found = [children[:cut], *([name] for name in children[cut:])]
    elif isinstance(model, nn.Sequential):
        found = _blocks(model, "")
    else:
        found = []
        for name in children:
            child = model.get_submodule(name)
            is_features = name == "features" and isinstance(child, nn.Sequential)
            found += _blocks(child, "features.") if is_features else [[name]]
    return [stage for stage in found if any(_has_params(model.get_submodule(name)) for name in stage)]


def stage_label(stage: Stage) -> str:
    """`conv1+bn1`, `layer1`, `features.0..4`: a stage as the logs and errors name it."""
    if len(stage) <= 3:
        return "+".join(stage)
    parent, _, last = stage[-1].rpartition(".")
    return f"{stage[0]}..{last if parent and stage[0].startswith(parent + '.') else stage[-1]}"


def _has_backbone(model: nn.Module) -> bool:
    return isinstance(getattr(model, "backbone", None), nn.Module)


def backbone_stages(model: nn.Module, classifier: bool) -> list[Stage]:
    """Stages of the feature extractor: of `backbone` (of `backbone.body` under an FPN) when the model has one
    (torchvision detectors and segmenters), of a classifier every stage but the head; other models have none."""
    if _has_backbone(model):
        prefix = "backbone.body" if isinstance(getattr(model.backbone, "body", None), nn.Module) else "backbone"
        return [[f"{prefix}.{name}" for name in stage] for stage in stages(model.get_submodule(prefix))]
    if classifier:
        return stages(model)[:-1]
    parts = stages(model)
    raise CvtoolError("model.freeze: this model has no `backbone` module to count stages in", where="model.freeze",
                      fix=f"name the modules to freeze, e.g. 'model.freeze=[{parts[0][0]}]' "
                      f"(its parts: {', '.join(stage_label(stage) for stage in parts)})")


def _parameterised(model: nn.Module, chosen: list[Stage]) -> list[str]:
    return [name for stage in chosen for name in stage if _has_params(model.get_submodule(name))]


def freeze_patterns(model: nn.Module, freeze: str | int | list | None, classifier: bool) -> list[str]:
    """`model.freeze` as patterns: null -> none; `backbone`; N -> the first N backbone stages; a pattern or a list."""
    if freeze is None:
        return []
    if isinstance(freeze, int) and not isinstance(freeze, bool):
        found = backbone_stages(model, classifier)
        if not 0 <= freeze <= len(found):
            listed = ", ".join(f"{i}: {stage_label(stage)}" for i, stage in enumerate(found, 1))
            raise CvtoolError(f"model.freeze={freeze}, but the model has {len(found)} backbone stages",
                              where="model.freeze", fix=f"use 0..{len(found)} (the first N of {listed})")
        return _parameterised(model, found[:freeze])
    if freeze == "backbone":
        return ["backbone"] if _has_backbone(model) else _parameterised(model, backbone_stages(model, classifier))
    patterns = [freeze] if isinstance(freeze, str) else freeze
    if not isinstance(patterns, list) or not all(isinstance(p, str | int) and not isinstance(p, bool)
                                                 for p in patterns):
        raise CvtoolError(f"model.freeze must be null, backbone, a number of stages or module-name patterns, "
                          f"got {freeze!r}", where="model.freeze",
                          fix="e.g. model.freeze=2 or 'model.freeze=[layer1,fc]'")
    return [str(p) for p in patterns]


def frozen_batchnorm(bn: nn.BatchNorm2d | nn.SyncBatchNorm) -> FrozenBatchNorm2d:
    """A FrozenBatchNorm2d with ``bn``'s affine parameters and running statistics (train mode leaves it alone)."""
    frozen = FrozenBatchNorm2d(bn.num_features, bn.eps).to(bn.running_mean.device)
    with torch.no_grad():
        if bn.affine:
            frozen.weight.copy_(bn.weight)
            frozen.bias.copy_(bn.bias)
        frozen.running_mean.copy_(bn.running_mean)
        frozen.running_var.copy_(bn.running_var)
    return frozen


def _freeze_batchnorms(model: nn.Module, patterns: list[str]) -> int:
    """Replace the BatchNorm layers inside the frozen modules by FrozenBatchNorm2d; returns how many."""
    chosen = [(name, module) for name, module in model.named_modules()
              if isinstance(module, _BATCHNORMS) and module.track_running_stats and name
              and any(matches(name, p) for p in patterns)]
    for name, module in chosen:
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, frozen_batchnorm(module))
    return len(chosen)


def freeze(model: nn.Module, setting: str | int | list | None, *, classifier: bool) -> nn.Module:
    """Apply `model.freeze`: matching parameters get requires_grad=False and BatchNorm2d inside frozen modules
    becomes FrozenBatchNorm2d (its statistics stay those loaded). Patterns matching nothing are errors."""
    patterns = freeze_patterns(model, setting, classifier)
    if not patterns:
        return model
    names = [name for name, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(matches(name, pattern) for name in names):
            raise unmatched_pattern("model.freeze", pattern, model)
    frozen, total = 0, sum(p.numel() for p in model.parameters())
    for name, param in model.named_parameters():
        if any(matches(name, p) for p in patterns):
            param.requires_grad_(False)
            frozen += param.numel()
    norms = _freeze_batchnorms(model, patterns)
    log.info("model.freeze=%s: %d of %d parameters frozen (%s), %d BatchNorm layers frozen", setting, frozen, total,
             ", ".join(patterns) if len(patterns) <= 8 else f"{', '.join(patterns[:8])}, ...", norms)
    return model
