"""SegNet (Badrinarayanan et al. 2015): a VGG-16-style encoder whose max-pools remember their argmax indices and a
mirrored decoder that upsamples by putting each value back where its max came from (``nn.MaxUnpool2d``).

Encoder stage i: ``convs_per_stage[i]`` (3x3 conv, BatchNorm, ReLU) blocks at ``width * min(2**i, 8)`` channels,
then a 2x2 max-pool with indices. Decoder stage i (deepest first): unpooling with those indices to the encoder
feature's size, then as many conv-BN-ReLU blocks, the last one narrowing to the next stage's channels; the first
stage's last conv is the class-score conv (3x3, as in the authors' Caffe model). The input is mirror-padded to a
multiple of ``2**depth`` (no row lost to floor pooling) and the logits cropped back to the input size.
Unpooling also works in deterministic mode (``torch.use_deterministic_algorithms``), see MaxUnpool2d.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cvtool.errors import CvtoolError
from cvtool.models.registry import register_model
from cvtool.models.unet import crop, init_convs, pad_to_multiple
from cvtool.models.weights import reject_weights_name

VGG16_CONVS = (2, 2, 3, 3, 3)  # conv layers per VGG-16 stage
DEPTHS = range(2, 6)


class MaxUnpool2d(nn.MaxUnpool2d):
    """``nn.MaxUnpool2d`` that also runs under ``torch.use_deterministic_algorithms(True)`` (where max_unpool2d
    raises, even on CPU) and under TorchScript tracing: non-overlapping pooling gives each value its own index, so
    a plain scatter is exact."""

    def forward(self, x: Tensor, indices: Tensor, output_size: Sequence[int] | None = None) -> Tensor:
        exact_scatter = torch.are_deterministic_algorithms_enabled() or torch.jit.is_tracing()  # tracing: sizes
        if not exact_scatter or output_size is None:  # are tensors, which max_unpool2d's size checks refuse
            return super().forward(x, indices, output_size)
        n, c = x.shape[:2]
        h, w = output_size[-2:]
        out = x.new_zeros(n, c, h * w).scatter(2, indices.flatten(2), x.flatten(2))
        return out.view(n, c, h, w)


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class EncoderStage(nn.Module):
    def __init__(self, cin: int, cout: int, convs: int):
        super().__init__()
        self.convs = nn.Sequential(*(conv_bn_relu(cin if i == 0 else cout, cout) for i in range(convs)))
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Pooled features, the pooling indices and the features before pooling (whose size unpooling restores)."""
        x = self.convs(x)
        pooled, indices = self.pool(x)
        return pooled, indices, x


class DecoderStage(nn.Module):
    def __init__(self, cin: int, cout: int, convs: int, num_classes: int | None = None):
        """``num_classes``: this is the last stage; its last conv scores the classes (no BatchNorm, no ReLU)."""
        super().__init__()
        self.unpool = MaxUnpool2d(2, 2)
        blocks = [conv_bn_relu(cin, cin) for _ in range(convs - 1)]
        blocks.append(conv_bn_relu(cin, cout) if num_classes is None else nn.Conv2d(cin, num_classes, 3, padding=1))
        self.convs = nn.Sequential(*blocks)

    def forward(self, x: Tensor, indices: Tensor, like: Tensor) -> Tensor:
        return self.convs(self.unpool(x, indices, output_size=like.shape[-2:]))


class SegNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 5, width: int = 64,
                 convs_per_stage: Sequence[int] = VGG16_CONVS):
        super().__init__()
        chans = [width * min(2**i, 8) for i in range(depth)]
        self.encoder = nn.ModuleList(EncoderStage(cin, c, n)
                                     for cin, c, n in zip([in_channels, *chans[:-1]], chans, convs_per_stage))
        self.decoder = nn.ModuleList(
            DecoderStage(chans[i], chans[i - 1] if i else 0, convs_per_stage[i], None if i else num_classes)
            for i in reversed(range(depth)))
        init_convs(self)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x, (top, left) = pad_to_multiple(x, 2 ** len(self.encoder))
        memory = []
        for stage in self.encoder:
            x, indices, before = stage(x)
            memory.append((indices, before))
        for stage, (indices, before) in zip(self.decoder, reversed(memory)):
            x = stage(x, indices, before)
        return crop(x, top, left, h, w)


def stage_convs(convs_per_stage: int | Sequence[int], depth: int) -> tuple[int, ...]:
    """Conv layers of each of the ``depth`` stages: an int for all, or the first ``depth`` entries of a list."""
    convs = (convs_per_stage,) * depth if isinstance(convs_per_stage, int) else tuple(convs_per_stage)[:depth]
    if len(convs) < depth or min(convs) < 1:
        raise CvtoolError(f"segnet needs >= 1 conv for each of its {depth} stages, got {convs_per_stage}",
                          where="model.convs_per_stage", fix="give an int or a list of at least depth entries")
    return convs


@register_model("segnet", task="segmentation", min_size=1,
                description="SegNet (Badrinarayanan et al. 2015): VGG-16 encoder, decoder unpooling with indices")
def segnet(num_classes: int, in_channels: int = 3, weights: str | None = None, *, depth: int = 5, width: int = 64,
           convs_per_stage: int | Sequence[int] = VGG16_CONVS) -> SegNet:
    """``depth`` 2..5 encoder/decoder stages, ``width`` first-stage channels (x2 per stage up to x8)."""
    reject_weights_name("segnet", weights)
    if depth not in DEPTHS:
        raise CvtoolError(f"segnet depth must be 2..5, got {depth}", where="model.depth",
                          fix="use 5 as in the paper (VGG-16's 5 stages)")
    return SegNet(num_classes, in_channels, depth=depth, width=width,
                  convs_per_stage=stage_convs(convs_per_stage, depth))
