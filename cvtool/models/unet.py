"""U-Net (Ronneberger et al. 2015): a contracting path of double 3x3 convolutions and 2x2 max-pools, an expanding
path of 2x2 up-convolutions concatenated with the matching contracting features, and a 1x1 class-score conv.

``padding="same"`` pads the convolutions and mirror-pads the input up to a multiple of ``2**depth``.
``padding="valid"`` is the paper's: unpadded convolutions, skip features centre-cropped to the expanding path
("matching crop"), and the overlap-tile strategy: the input is mirror-padded by the exact margin the valid
convolutions eat (184 px for depth 4, e.g. a 572 px tile for a 388 px output). Both return logits of the input
size for any input size. Also home of the padding helpers the other segmenters share.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvtool.errors import CvtoolError
from cvtool.models.registry import register_model
from cvtool.models.weights import reject_weights_name

PADDINGS = ("same", "valid")


def mirror_pad(x: Tensor, left: int, right: int, top: int, bottom: int) -> Tensor:
    """Reflect-pad the last two dims by any amount (repeated reflections); 1-px sides are replicated."""
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        if h < 2 or w < 2:
            return F.pad(x, (left, right, top, bottom), mode="replicate")
        step = (min(left, w - 1), min(right, w - 1), min(top, h - 1), min(bottom, h - 1))
        x = F.pad(x, step, mode="reflect")
        left, right, top, bottom = (p - s for p, s in zip((left, right, top, bottom), step))
    return x


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Mirror-pad H and W (about evenly on both sides) up to multiples of ``multiple``; returns the padded
    tensor and the (top, left) position of the original in it."""
    h, w = x.shape[-2:]
    pad_h, pad_w = -h % multiple, -w % multiple
    top, left = pad_h // 2, pad_w // 2
    return mirror_pad(x, left, pad_w - left, top, pad_h - top), (top, left)


def crop(x: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    """The ``height`` x ``width`` window of ``x`` at (top, left)."""
    return x[..., top:top + height, left:left + width]


def center_crop(x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
    """The centred ``size`` window of ``x`` (U-Net's "matching crop" of the skip features)."""
    h, w = x.shape[-2:]
    return crop(x, (h - size[0]) // 2, (w - size[1]) // 2, size[0], size[1])


def valid_margin(depth: int = 4) -> int:
    """Pixels the valid convolutions eat in total (both sides) per spatial dim: 184 for depth 4 (572 -> 388)."""
    return 12 * 2**depth - 8


def valid_tile(output_size: int, depth: int = 4) -> tuple[int, int]:
    """(input, output) side of the smallest valid-mode tile whose output covers ``output_size`` pixels.

    Outputs are ``2**depth * b - 4 * (2**depth - 1)`` for a bottleneck side b (every level must stay >= 1 px);
    the input is the output plus valid_margin(depth). Depth 4, output 388: (572, 388), as in the paper.
    """
    step = 2**depth

    def out(b: int, levels: int) -> int:
        return 2**levels * b - 4 * (2**levels - 1)

    b = max(1, math.ceil((output_size + 4 * (step - 1)) / step))
    while any(out(b, k) < 1 for k in range(1, depth + 1)):
        b += 1
    return out(b, depth) + valid_margin(depth), out(b, depth)


def valid_input_size(output_size: int, depth: int = 4) -> int:
    """Input side the valid-mode network needs for (at least) ``output_size`` output pixels: 572 for 388."""
    return valid_tile(output_size, depth)[0]


def double_conv(cin: int, cout: int, padding: int, batch_norm: bool) -> nn.Sequential:
    """(3x3 conv, BatchNorm, ReLU) twice; no BatchNorm (and conv biases) with ``batch_norm=False``."""
    layers: list[nn.Module] = []
    for c in (cin, cout):
        layers.append(nn.Conv2d(c, cout, 3, padding=padding, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def init_convs(model: nn.Module) -> None:
    """He-normal convolution weights (as in the paper), zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class UNet(nn.Module):
    """U-Net with ``depth`` poolings; level i has ``width * 2**i`` channels (the bottleneck ``width * 2**depth``)."""

    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 4, width: int = 64,
                 padding: str = "same", batch_norm: bool = True, aux: bool = False):
        super().__init__()
        self.depth, self.padding = depth, padding
        pad = 1 if padding == "same" else 0
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(double_conv(cin, c, pad, batch_norm)
                                  for cin, c in zip([in_channels, *chans[:-1]], chans))
        self.pool = nn.MaxPool2d(2, 2)
        levels = list(reversed(range(depth)))  # expanding path: deepest level first
        self.up = nn.ModuleList(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2) for i in levels)
        self.decode = nn.ModuleList(double_conv(2 * chans[i], chans[i], pad, batch_norm) for i in levels)
        self.head = nn.Conv2d(width, num_classes, 1)
        # deep supervision: class scores of the bottleneck, upsampled, as an auxiliary loss in training only
        self.aux_head = nn.Conv2d(chans[-1], num_classes, 1) if aux else None
        init_convs(self)

    def _pad_input(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Same: pad to a multiple of 2**depth. Valid: overlap-tile mirror padding, output aligned at (0, 0)."""
        if self.padding == "same":
            return pad_to_multiple(x, 2**self.depth)
        h, w = x.shape[-2:]
        (in_h, _), (in_w, _) = valid_tile(h, self.depth), valid_tile(w, self.depth)
        half = valid_margin(self.depth) // 2
        return mirror_pad(x, half, in_w - w - half, half, in_h - h - half), (0, 0)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x, (top, left) = self._pad_input(x)
        skips = []
        for block in self.down[:-1]:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.down[-1](x)
        bottleneck = x
        for up, block, skip in zip(self.up, self.decode, reversed(skips)):
            x = up(x)
            x = block(torch.cat([center_crop(skip, x.shape[-2:]), x], 1))
        out = crop(self.head(x), top, left, h, w)
        if self.aux_head is None or not self.training:
            return out
        aux = F.interpolate(self.aux_head(bottleneck), size=x.shape[-2:], mode="bilinear", align_corners=False)
        return {"out": out, "aux": crop(aux, top, left, h, w)}


@register_model("unet", task="segmentation", min_size=1,
                description="U-Net (Ronneberger et al. 2015), same or valid (overlap-tile) convolutions")
def unet(num_classes: int, in_channels: int = 3, weights: str | None = None, *, depth: int = 4, width: int = 64,
         padding: str = "same", batch_norm: bool = True, aux: bool = False) -> UNet:
    """``depth`` poolings, ``width`` first-level channels (doubling per level), ``padding`` same | valid,
    ``aux``: an auxiliary (deep supervision) head on the bottleneck in training."""
    reject_weights_name("unet", weights)
    if padding not in PADDINGS:
        raise CvtoolError(f"unet padding must be one of {', '.join(PADDINGS)}, got {padding!r}",
                          where="model.padding", fix="use same (padded convs) or valid (the paper's)")
    if depth < 1:
        raise CvtoolError(f"unet depth must be >= 1, got {depth}", where="model.depth", fix="use 4 as in the paper")
    return UNet(num_classes, in_channels, depth=depth, width=width, padding=padding, batch_norm=batch_norm, aux=aux)
