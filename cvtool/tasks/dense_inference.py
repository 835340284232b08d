"""Per-pixel class scores for whole images: sliding-window tiles (U-Net's overlap-tile strategy) for images larger
than the training crop, and multi-scale + horizontal-flip test-time augmentation (softmax scores averaged)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def logits_of(output) -> torch.Tensor:
    """The main logits of a segmentation model's output (a tensor, or torchvision's {"out", "aux"} dict)."""
    return output["out"] if isinstance(output, dict) else output


def _starts(length: int, tile: int, stride: int) -> list[int]:
    """Tile offsets covering [0, length): evenly stepped, the last tile flush with the end."""
    if length <= tile:
        return [0]
    count = math.ceil((length - tile) / stride) + 1
    return sorted({min(i * stride, length - tile) for i in range(count)})


def tiled_logits(model: torch.nn.Module, images: torch.Tensor, tile: int, overlap: float) -> torch.Tensor:
    """Logits of `images` computed tile by tile (`tile` px squares overlapping by `overlap`), averaged where tiles
    overlap. Images smaller than a tile are padded (and the padding cropped off again)."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, max(0, tile - width), 0, max(0, tile - height)))
    stride = max(1, int(tile * (1 - overlap)))
    total, count = None, torch.zeros(padded.shape[-2:], device=images.device)
    for y in _starts(padded.shape[-2], tile, stride):
        for x in _starts(padded.shape[-1], tile, stride):
            out = logits_of(model(padded[..., y:y + tile, x:x + tile]))
            if total is None:
                total = out.new_zeros((*out.shape[:2], *padded.shape[-2:]))
            total[..., y:y + tile, x:x + tile] += out
            count[y:y + tile, x:x + tile] += 1
    return (total / count)[..., :height, :width]


def dense_scores(model: torch.nn.Module, images: torch.Tensor, *, scales: list[float] = (1.0,), flip: bool = False,
                 tile: int | None = None, overlap: float = 0.25) -> torch.Tensor:
    """(N, K, H, W) class scores: plain logits without augmentation, else the mean softmax over every scale
    (bilinear resize, results resized back) and, with `flip`, its horizontal mirror."""
    scales = list(scales)
    if scales == [1.0] and not flip:
        return tiled_logits(model, images, tile, overlap) if tile else logits_of(model(images))
    size, total = images.shape[-2:], 0.0
    for scale in scales:
        x = images if scale == 1 else F.interpolate(images, scale_factor=scale, mode="bilinear", align_corners=False)
        for mirrored in (False, True) if flip else (False,):
            xi = x.flip(-1) if mirrored else x
            out = tiled_logits(model, xi, tile, overlap) if tile else logits_of(model(xi))
            out = out.flip(-1) if mirrored else out
            if out.shape[-2:] != size:
                out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
            total = total + out.float().softmax(1)
    return total / (len(scales) * (2 if flip else 1))
