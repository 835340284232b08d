"""Dilated convolutions for dense prediction (Yu & Koltun 2016): a VGG-16 front end without its last two poolings
(conv5 dilated by 2, fc6 by 4: output stride 8) and the "basic" context module, bilinearly upsampled to the input.

Front end: VGG-16's 13 3x3 convs (BatchNorm optional) with pool1-3 only, fc6 and fc7 as convolutions, a 1x1
class-score conv. fc6 is a 3x3 conv with ``fc_width`` (1024) channels instead of VGG's 7x7x4096, the reduction
DeepLab-LargeFOV (Chen et al. 2015) showed to be as accurate. Context module: 3x3 convs dilated 1, 1, 2, 4, 8,
16, 1 (each followed by ReLU, the paper's truncation) and a 1x1 conv, identity-initialised so that it starts by
passing the front end's (truncated) scores through; wider than the class count, the paper's "large" init with
small noise is used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvtool.models.registry import register_model
from cvtool.models.unet import init_convs
from cvtool.models.weights import reject_weights_name

VGG16_STAGES = (2, 2, 3, 3, 3)  # 3x3 convs per VGG-16 stage
CONTEXT_DILATIONS = (1, 1, 2, 4, 8, 16, 1)


def vgg_stage(cin: int, cout: int, convs: int, batch_norm: bool, dilation: int = 1) -> list[nn.Module]:
    """``convs`` x (3x3 conv with ``dilation``, optional BatchNorm, ReLU); same-size outputs."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers.append(nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=dilation, dilation=dilation,
                                bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(nn.ReLU(inplace=True))
    return layers


def fc_layers(cin: int, width: int, dilation: int, batch_norm: bool, dropout: float) -> list[nn.Module]:
    """VGG's fc6 (3x3 conv, ``dilation``) and fc7 (1x1 conv) as convolutions, each with ReLU and dropout."""
    layers: list[nn.Module] = []
    for conv in (nn.Conv2d(cin, width, 3, padding=dilation, dilation=dilation, bias=not batch_norm),
                 nn.Conv2d(width, width, 1, bias=not batch_norm)):
        layers += [conv, *([nn.BatchNorm2d(width)] if batch_norm else []), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    return layers


def front_end(num_classes: int, in_channels: int, width: int, fc_width: int, batch_norm: bool,
              dropout: float) -> nn.Sequential:
    """VGG-16 with pool4 and pool5 removed, later convs dilated to compensate: class scores at stride 8."""
    chans = [width * min(2**i, 8) for i in range(5)]
    layers: list[nn.Module] = []
    for i, (cin, cout, convs) in enumerate(zip([in_channels, *chans[:-1]], chans, VGG16_STAGES)):
        layers += vgg_stage(cin, cout, convs, batch_norm, dilation=2 if i == 4 else 1)
        if i < 3:
            layers.append(nn.MaxPool2d(2, 2))
    layers += fc_layers(chans[-1], fc_width, 4, batch_norm, dropout)
    layers.append(nn.Conv2d(fc_width, num_classes, 1))
    return nn.Sequential(*layers)


def identity_init(conv: nn.Conv2d, num_classes: int, noise: bool) -> None:
    """Yu & Koltun's init: the kernel centre maps input a to output b when floor(a C / c_in) == floor(b C / c_out)
    with weight C / c_out (C = num_classes; the identity when both are C), plus N(0, sigma) noise if ``noise``."""
    cout, cin = conv.weight.shape[:2]
    a, b = torch.arange(cin), torch.arange(cout)
    match = (a[None] * num_classes // cin) == (b[:, None] * num_classes // cout)
    with torch.no_grad():
        conv.weight.zero_()
        if noise:
            conv.weight.normal_(0.0, 1e-3 * num_classes / cout)
        centre = conv.weight[:, :, conv.kernel_size[0] // 2, conv.kernel_size[1] // 2]
        centre[match] = num_classes / cout
        nn.init.zeros_(conv.bias)


class ContextModule(nn.Sequential):
    """3x3 convs dilated 1, 1, 2, 4, 8, 16, 1 at ``channels`` each, with ReLU, then a 1x1 conv to the classes."""

    def __init__(self, num_classes: int, channels: int):
        layers: list[nn.Module] = []
        cin = num_classes
        for d in CONTEXT_DILATIONS:
            layers += [nn.Conv2d(cin, channels, 3, padding=d, dilation=d), nn.ReLU(inplace=True)]
            cin = channels
        layers.append(nn.Conv2d(channels, num_classes, 1))
        super().__init__(*layers)
        for m in self:
            if isinstance(m, nn.Conv2d):
                identity_init(m, num_classes, noise=channels != num_classes)


class DilatedNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: int = 64, fc_width: int = 1024,
                 context: bool = True, context_width_mult: float = 1.0, batch_norm: bool = True,
                 dropout: float = 0.5):
        super().__init__()
        self.front_end = front_end(num_classes, in_channels, width, fc_width, batch_norm, dropout)
        init_convs(self.front_end)
        channels = max(num_classes, round(num_classes * context_width_mult))
        self.context = ContextModule(num_classes, channels) if context else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        scores = self.context(self.front_end(x))
        return F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)


@register_model("dilated", task="segmentation", min_size=8,
                description="Dilated-convolution front end + context module (Yu & Koltun 2016), output stride 8")
def dilated(num_classes: int, in_channels: int = 3, weights: str | None = None, *, width: int = 64,
            fc_width: int = 1024, context: bool = True, context_width_mult: float = 1.0, batch_norm: bool = True,
            dropout: float = 0.5) -> DilatedNet:
    """``width`` first-stage channels, ``context``: add the basic context module (``context_width_mult`` x
    classes wide)."""
    reject_weights_name("dilated", weights)
    return DilatedNet(num_classes, in_channels, width=width, fc_width=fc_width, context=context,
                      context_width_mult=context_width_mult, batch_norm=batch_norm, dropout=dropout)
