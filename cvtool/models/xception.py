"""Xception (Chollet 2017): entry, middle and exit flows of depthwise separable convolutions."""

from __future__ import annotations

import torch
from torch import nn

from cvtool.models.registry import register_model
from cvtool.models.weights import reject_weights_name


class SeparableConv2d(nn.Sequential):
    """3x3 depthwise then 1x1 pointwise convolution, no non-linearity in between (as in the paper)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class XceptionBlock(nn.Module):
    """(ReLU, SeparableConv, BN) units plus a shortcut; downsampling blocks end with a stride-2 max-pool and
    use a strided 1x1 conv + BN shortcut, the others the identity."""

    def __init__(self, in_channels: int, widths: list[int], downsample: bool, relu_first: bool = True):
        super().__init__()
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip([in_channels, *widths[:-1]], widths, strict=True)):
            if i > 0 or relu_first:
                layers.append(nn.ReLU())
            layers += [SeparableConv2d(c_in, c_out), nn.BatchNorm2d(c_out)]
        if downsample:
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.residual = nn.Sequential(*layers)
        self.shortcut: nn.Module = nn.Identity()
        if downsample or in_channels != widths[-1]:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, widths[-1], 1, stride=2 if downsample else 1, bias=False),
                nn.BatchNorm2d(widths[-1]),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual(x) + self.shortcut(x)


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, 3, stride, bias=False)  # "valid" padding, as in the paper
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU()]


class Xception(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, middle_blocks: int, width: float, dropout: float):
        super().__init__()

        def c(channels: int) -> int:  # width multiplier, kept a multiple of 8
            return max(8, round(channels * width / 8) * 8)

        self.entry = nn.Sequential(
            *_conv_bn_relu(in_channels, c(32), 2),
            *_conv_bn_relu(c(32), c(64), 1),
            XceptionBlock(c(64), [c(128)] * 2, downsample=True, relu_first=False),
            XceptionBlock(c(128), [c(256)] * 2, downsample=True),
            XceptionBlock(c(256), [c(728)] * 2, downsample=True),
        )
        self.middle = nn.Sequential(
            *(XceptionBlock(c(728), [c(728)] * 3, downsample=False) for _ in range(middle_blocks))
        )
        self.exit = nn.Sequential(
            XceptionBlock(c(728), [c(728), c(1024)], downsample=True),
            SeparableConv2d(c(1024), c(1536)), nn.BatchNorm2d(c(1536)), nn.ReLU(),
            SeparableConv2d(c(1536), c(2048)), nn.BatchNorm2d(c(2048)), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c(2048), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.exit(self.middle(self.entry(x)))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))


@register_model("xception", task="classification", min_size=7, description="Xception (Chollet 2017)")
def xception(
    num_classes: int,
    in_channels: int = 3,
    weights: str | None = None,
    middle_blocks: int = 8,
    width: float = 1.0,
    dropout: float = 0.5,
) -> Xception:
    """Xception with ``middle_blocks`` middle-flow blocks and channel counts scaled by ``width``."""
    reject_weights_name("xception", weights)
    return Xception(num_classes, in_channels, middle_blocks, width, dropout)
