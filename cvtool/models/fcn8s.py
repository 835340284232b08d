"""FCN-32s/16s/8s (Long et al. 2015): a VGG-16 backbone made fully convolutional, class scores at stride 32
refined by scores of pool4 (stride 16) and pool3 (stride 8).

Each fusion upsamples the coarser scores 2x with a transposed conv initialised to bilinear interpolation and adds
the finer pool's 1x1 scores (zero-initialised, as in the paper); the fused scores are upsampled to the input
(8x for 8s) by a bilinear-initialised transposed conv. fc6 is a 3x3 conv with ``fc_width`` (1024) channels
instead of VGG's 7x7x4096 (as DeepLab-LargeFOV). Instead of the paper's 100 px padding and offset crops, the
input is mirror-padded to a multiple of 32, so every map aligns exactly, and the logits cropped back.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cvtool.errors import CvtoolError
from cvtool.models.dilated import VGG16_STAGES, fc_layers, vgg_stage
from cvtool.models.registry import register_model
from cvtool.models.unet import crop, init_convs, pad_to_multiple
from cvtool.models.weights import reject_weights_name

VARIANTS = {"32s": 32, "16s": 16, "8s": 8}  # variant -> stride of the finest fused scores


def bilinear_kernel(channels: int, kernel: int) -> Tensor:
    """Weights of a (channels -> channels) transposed conv doing per-channel bilinear upsampling."""
    factor = (kernel + 1) // 2
    centre = factor - 1 if kernel % 2 else factor - 0.5
    ramp = 1 - (torch.arange(kernel, dtype=torch.float32) - centre).abs() / factor
    weight = torch.zeros(channels, channels, kernel, kernel)
    weight[range(channels), range(channels)] = ramp[:, None] * ramp[None]
    return weight


def upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    """Learnable ``factor``x upsampling (exactly ``factor`` times the size), initialised to bilinear."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


def zero_conv(cin: int, cout: int) -> nn.Conv2d:
    """1x1 score conv starting at zero (a new skip first leaves the coarser prediction unchanged)."""
    conv = nn.Conv2d(cin, cout, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


def fuse(coarse: Tensor, fine: Tensor) -> Tensor:
    """Upsampled coarse scores cropped to the fine scores' size, plus the fine scores."""
    return crop(coarse, 0, 0, *fine.shape[-2:]) + fine


class FCN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, variant: str = "8s", width: int = 64,
                 fc_width: int = 1024, batch_norm: bool = True, dropout: float = 0.5):
        super().__init__()
        self.stride = VARIANTS[variant]
        chans = [width * min(2**i, 8) for i in range(5)]
        stages = [nn.Sequential(*vgg_stage(cin, cout, n, batch_norm), nn.MaxPool2d(2, 2))
                  for cin, cout, n in zip([in_channels, *chans[:-1]], chans, VGG16_STAGES)]
        self.to_pool3 = nn.Sequential(*stages[:3])
        self.to_pool4, self.to_pool5 = stages[3], stages[4]
        self.fc = nn.Sequential(*fc_layers(chans[4], fc_width, 1, batch_norm, dropout))
        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)
        init_convs(self)
        if self.stride <= 16:
            self.upscore2 = upsampler(num_classes, 2)
            self.score_pool4 = zero_conv(chans[3], num_classes)
        if self.stride == 8:
            self.upscore_pool4 = upsampler(num_classes, 2)
            self.score_pool3 = zero_conv(chans[2], num_classes)
        self.upscore = upsampler(num_classes, self.stride)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x, (top, left) = pad_to_multiple(x, 32)
        pool3 = self.to_pool3(x)
        pool4 = self.to_pool4(pool3)
        scores = self.score_fr(self.fc(self.to_pool5(pool4)))
        if self.stride <= 16:
            scores = fuse(self.upscore2(scores), self.score_pool4(pool4))
        if self.stride == 8:
            scores = fuse(self.upscore_pool4(scores), self.score_pool3(pool3))
        return crop(self.upscore(scores), top, left, h, w)


@register_model("fcn8s", task="segmentation", min_size=1,
                description="FCN-8s/16s/32s (Long et al. 2015) on a VGG-16 backbone with skip fusion")
def fcn8s(num_classes: int, in_channels: int = 3, weights: str | None = None, *, variant: str = "8s",
          width: int = 64, fc_width: int = 1024, batch_norm: bool = True, dropout: float = 0.5) -> FCN:
    """``variant`` 8s | 16s | 32s: finest fused stride; ``width`` first-stage channels, ``fc_width`` fc6/fc7's."""
    reject_weights_name("fcn8s", weights)
    if variant not in VARIANTS:
        raise CvtoolError(f"fcn8s variant must be one of {', '.join(VARIANTS)}, got {variant!r}",
                          where="model.variant", fix="use 8s (the paper's best), 16s or 32s")
    return FCN(num_classes, in_channels, variant=variant, width=width, fc_width=fc_width, batch_norm=batch_norm,
               dropout=dropout)
