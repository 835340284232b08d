"""What a network has learnt, without a target class: first-layer filters and the feature maps of a layer."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

from cvtool.viz.attribution import module_named


def tile(images: np.ndarray, pad: int = 1) -> np.ndarray:
    """N x H x W (x C) images in [0, 1] as one near-square grid (white gaps) -> rows*H x cols*W (x C)."""
    n, h, w = images.shape[:3]
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + pad) - pad, cols * (w + pad) - pad, *images.shape[3:]), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = image
    return grid


def scaled(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """Each item min-max scaled to [0, 1] over `axes` (a constant item becomes 0.5)."""
    low, high = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    return np.where(high > low, (x - low) / np.where(high > low, high - low, 1), 0.5).astype(np.float32)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    raise ValueError("no Conv2d")


def filters(model: nn.Module) -> tuple[str, np.ndarray]:
    """(layer name, the first convolution's kernels out x K x K x 3 (RGB) or out x K x K, each scaled to [0, 1])."""
    name, conv = first_conv(model)
    weight = conv.weight.detach().float().cpu().numpy()  # out x in x K x K
    if weight.shape[1] == 3:
        return name, scaled(weight.transpose(0, 2, 3, 1), (1, 2, 3))
    return name, scaled(weight.mean(axis=1), (1, 2))


def activations(model: nn.Module, images: Tensor, layer: str) -> np.ndarray:
    """The output feature maps (B x C x h x w) of `layer` for `images`."""
    captured: list[Tensor] = []
    handle = module_named(model, layer).register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        handle.remove()
    return captured[0].detach().float().cpu().numpy()
