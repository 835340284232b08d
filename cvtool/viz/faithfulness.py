"""Do attribution maps mean something? The pointing game (is the map's maximum on the object?) and the deletion
curve (how fast the target's probability falls as the most salient pixels are greyed out first)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pointing_hits(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """B booleans: the (first) maximum of each H x W map lies inside its object mask."""
    flat = maps.reshape(len(maps), -1).argmax(axis=1)
    return masks.reshape(len(masks), -1)[np.arange(len(masks)), flat].astype(bool)


@torch.no_grad()
def deletion_auc(model: nn.Module, images: Tensor, targets: Tensor, maps: np.ndarray | None, steps: int = 16,
                 seed: int = 0, fill: Tensor | None = None) -> np.ndarray:
    """B areas under the target-probability curve as pixels are replaced by `fill` (default grey, 0 after
    normalisation; `blurred` gives a blurred copy) in order of the map (highest first; equal values in random
    order), or in a seeded random order when `maps` is None; fractions 0, 1/steps, ..., 1, trapezoidal rule
    (lower = the map found what the model relies on)."""
    b, _, h, w = images.shape
    keys = [np.random.default_rng([seed, i]).random(h * w) for i in range(b)]  # random order (among ties)
    if maps is None:
        order = np.stack([np.argsort(key) for key in keys])
    else:
        order = np.stack([np.lexsort((key, -m)) for key, m in zip(keys, maps.reshape(b, -1))])
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(h * w)[None].repeat(b, 0), axis=1)
    rank = torch.as_tensor(rank.reshape(b, 1, h, w), device=images.device)
    curve = []
    for k in range(steps + 1):
        kept = (rank >= round(k * h * w / steps)).to(images.dtype)
        removed = images * kept if fill is None else images * kept + fill * (1 - kept)
        probs = F.softmax(model(removed).float(), dim=1)
        curve.append(probs[torch.arange(b), targets].cpu().numpy())
    return np.trapezoid(np.stack(curve, axis=1), dx=1 / steps, axis=1)


def blurred(images: Tensor, sigma: float) -> Tensor:
    """A Gaussian blur of the batch, sigma a fraction (< 1) of the shorter image side or pixels: deleted pixels
    filled from it lose their detail without drawing the deletion mask's outline as a new, sharp shape."""
    from torchvision.transforms.v2.functional import gaussian_blur

    sigma = sigma * min(images.shape[-2:]) if sigma < 1 else sigma
    size = 2 * int(np.ceil(3 * sigma)) + 1
    return gaussian_blur(images, [size, size], [sigma, sigma])
