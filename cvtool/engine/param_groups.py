"""Optimizer parameter groups: the weight-decay split, lr multipliers by name pattern and layer-wise lr decay."""

from __future__ import annotations

import logging

import torch

from cvtool.errors import CvtoolError
from cvtool.models.freezing import matches, stages, unmatched_pattern

log = logging.getLogger("cvtool.train")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def checked_scales(lr_scale: dict | None) -> dict[str, float]:
    """`optim.lr_scale` as {pattern: multiplier}; anything but a map of patterns to numbers >= 0 is an error."""
    fix = "e.g. 'optim.lr_scale={layer1*:0.1,fc:10}' (a module-name pattern -> its lr multiplier)"
    if not isinstance(lr_scale, dict | None):
        raise CvtoolError(f"optim.lr_scale must map module-name patterns to lr multipliers, got {lr_scale!r}",
                          where="optim.lr_scale", fix=fix)
    for pattern, scale in (lr_scale or {}).items():
        if not _number(scale) or scale < 0:
            raise CvtoolError(f"optim.lr_scale: the multiplier of {pattern!r} must be a number >= 0, got {scale!r}",
                              where="optim.lr_scale", fix=fix)
    return {str(pattern): float(scale) for pattern, scale in (lr_scale or {}).items()}


def layer_depths(model: torch.nn.Module) -> dict[str, int]:
    """Parameter name -> how many stages its stage lies below the head (the head: 0; cvtool.models.freezing.stages).
    Parameters outside every stage (held by the model itself) count as the deepest."""
    found = stages(model)
    depths = {}
    for name, _ in model.named_parameters():
        index = next((i for i, stage in enumerate(found) if any(matches(name, module) for module in stage)), 0)
        depths[name] = len(found) - 1 - index
    return depths


def lr_multipliers(model: torch.nn.Module, lr_scale: dict | None, layer_decay: float | None) -> dict[str, float]:
    """Each trainable parameter's lr multiplier: layer_decay ** depth, times the multiplier of the longest
    `lr_scale` pattern it matches. A pattern matching no parameter is an error."""
    scales = checked_scales(lr_scale)
    if layer_decay is not None and (not _number(layer_decay) or not 0 < layer_decay <= 1):
        raise CvtoolError(f"optim.layer_decay must be in (0, 1], got {layer_decay!r}", where="optim.layer_decay",
                          fix="e.g. optim.layer_decay=0.7 (each stage below the head trains at 0.7x the lr above)")
    names = [name for name, _ in model.named_parameters()]
    for pattern in scales:
        if not any(matches(name, pattern) for name in names):
            raise unmatched_pattern("optim.lr_scale", pattern, model)
    depths = layer_depths(model) if layer_decay is not None else {}
    longest_first = sorted(scales, key=len, reverse=True)
    multipliers = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            pattern = next((p for p in longest_first if matches(name, p)), None)
            decay = layer_decay ** depths[name] if layer_decay is not None else 1.0
            multipliers[name] = decay * (scales[pattern] if pattern is not None else 1.0)
    return multipliers


def parameter_groups(model: torch.nn.Module, lr: float, *, decay_norm_and_bias: bool, lr_scale: dict | None,
                     layer_decay: float | None) -> list[dict]:
    """The trainable parameters grouped by lr and weight decay (norm layers and biases, ndim <= 1, get none unless
    `decay_norm_and_bias`). Groups at the base lr come first: the logged lr is the first group's."""
    multipliers = lr_multipliers(model, lr_scale, layer_decay)
    if not multipliers:
        raise CvtoolError("the model has no trainable parameter left", where="model.freeze",
                          fix="freeze fewer stages or patterns")
    grouped: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if name in multipliers:
            no_decay = param.ndim <= 1 and not decay_norm_and_bias
            grouped.setdefault((multipliers[name], no_decay), []).append(param)
    keys = sorted(grouped, key=lambda key: (key[0] != 1.0, -key[0], key[1]))
    groups = [{"params": grouped[(scale, no_decay)], "lr": lr * scale, **({"weight_decay": 0.0} if no_decay else {})}
              for scale, no_decay in keys]
    log.info("parameter groups: %d (%s)", len(groups), ", ".join(
        f"lr {g['lr']:.3g}: {len(g['params'])} tensors{' without weight decay' if 'weight_decay' in g else ''}"
        for g in groups))
    return groups
