"""Our top-down pose network: a stacked hourglass (Newell et al. 2016) that maps a person crop to K keypoint heatmaps
at stride 4, with intermediate supervision.

A stem (7x7/2 conv, residual blocks, 2x2 max-pool) brings the crop to stride 4; each of ``stacks`` hourglasses
pools ``depth`` times and upsamples back (nearest neighbour) adding a residual skip at every level; a 1x1 head per
stack gives the heatmaps, which (through 1x1 convs) are added back into the next stack's input, as in the paper.
Training returns every stack's heatmaps (each gets the loss); evaluation returns the last stack's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cvtool.errors import CvtoolError
from cvtool.models.registry import register_model
from cvtool.models.weights import reject_weights_name

STRIDE = 4  # heatmap stride: the stem's


def stride_multiple(depth: int) -> int:
    """Input sides divisible by this give exact H/4 x W/4 heatmaps (and the smallest working side)."""
    return STRIDE * 2**depth


class Residual(nn.Module):
    """The paper's pre-activation bottleneck: BN-ReLU-1x1 (cout/2), BN-ReLU-3x3 (cout/2), BN-ReLU-1x1 (cout), plus
    the input (through a 1x1 conv where the width changes)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = max(cout // 2, 1)
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            nn.BatchNorm2d(mid), nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1))
        self.skip = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.skip(x)


class Hourglass(nn.Module):
    """One hourglass level: a full-resolution residual branch plus (pool, residual, the next level, residual,
    upsample); the innermost level has a residual block in place of the next level."""

    def __init__(self, depth: int, channels: int):
        super().__init__()
        self.skip = Residual(channels, channels)
        self.down = Residual(channels, channels)
        self.inner = Hourglass(depth - 1, channels) if depth > 1 else Residual(channels, channels)
        self.up = Residual(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        low = self.up(self.inner(self.down(F.max_pool2d(x, 2))))
        # upsampled to the skip's size (not x2): odd sides floor in the pooling and still line up
        return self.skip(x) + F.interpolate(low, size=x.shape[-2:], mode="nearest")


class Stack(nn.Module):
    """One stack: hourglass, a residual block and a 1x1 conv-BN-ReLU, the 1x1 heatmap head; with ``merge``, the
    next stack's input: this one's plus its features and heatmaps, each through a 1x1 conv (the paper's)."""

    def __init__(self, depth: int, channels: int, num_keypoints: int, merge: bool):
        super().__init__()
        self.hourglass = Hourglass(depth, channels)
        self.features = nn.Sequential(Residual(channels, channels), nn.Conv2d(channels, channels, 1, bias=False),
                                      nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.head = nn.Conv2d(channels, num_keypoints, 1)
        nn.init.normal_(self.head.weight, std=0.001)  # small initial heatmaps: the targets are mostly zero
        nn.init.zeros_(self.head.bias)
        self.merge = merge
        self.merge_features = nn.Conv2d(channels, channels, 1) if merge else nn.Identity()
        self.merge_heatmaps = nn.Conv2d(num_keypoints, channels, 1) if merge else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(the next stack's input, this stack's heatmaps)"""
        features = self.features(self.hourglass(x))
        heatmaps = self.head(features)
        if self.merge:
            x = x + self.merge_features(features) + self.merge_heatmaps(heatmaps)
        return x, heatmaps


class PoseHeatmapNet(nn.Module):
    """``stacks`` hourglasses of ``depth`` levels, ``channels`` wide, giving ``num_keypoints`` heatmaps at stride 4."""

    def __init__(self, num_keypoints: int, in_channels: int, *, stacks: int, depth: int, channels: int):
        super().__init__()
        half = max(channels // 2, 1)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, half, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(half),
            nn.ReLU(inplace=True), Residual(half, channels), nn.MaxPool2d(2), Residual(channels, channels))
        self.stacks = nn.ModuleList(Stack(depth, channels, num_keypoints, merge=i < stacks - 1) for i in range(stacks))
        self.explained_layer = f"stacks.{stacks - 1}.features"  # Grad-CAM's default: the last stack's features

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        x = self.stem(x)
        heatmaps = []
        for stack in self.stacks:
            x, stage = stack(x)
            heatmaps.append(stage)
        if self.training:
            return heatmaps
        return heatmaps[-1]


def _positive_int(value: object, key: str, fix: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CvtoolError(f"{key} must be an integer >= 1, got {value!r}", where=f"model.{key}", fix=fix)


# builder defaults: the paper's 8 stacks of depth 4 at 256 channels, COCO's 17 keypoints (the configs size it down).
# min_size: that of depth 1; the builder checks input_size against its depth's.
@register_model("pose_heatmap", task="keypoints", min_size=stride_multiple(1),
                description="stacked hourglass (Newell et al. 2016): person crop -> keypoint heatmaps at stride 4")
def pose_heatmap(num_classes: int, in_channels: int = 3, weights: str | None = None, *, num_keypoints: int = 17,
                 stacks: int = 8, depth: int = 4, channels: int = 256,
                 input_size: int | tuple[int, int] | list[int] | None = None) -> PoseHeatmapNet:
    """``stacks`` hourglasses of ``depth`` poolings and ``channels`` width for ``num_keypoints`` keypoints. The class
    count is not used (one heatmap set serves every category); ``input_size`` (side or (H, W)) is checked."""
    reject_weights_name("pose_heatmap", weights)
    _positive_int(num_keypoints, "num_keypoints", "set dataset.num_keypoints to the category's keypoint count")
    _positive_int(stacks, "stacks", "use 2 (this project's CPU default) to 8 (the paper's)")
    _positive_int(depth, "depth", "use 4 as in the paper (inputs need sides >= 4 * 2**depth)")
    _positive_int(channels, "channels", "use 256 as in the paper, or less on a CPU")
    if input_size is not None:
        sides = [input_size] * 2 if isinstance(input_size, int) else list(input_size)
        if min(sides) < stride_multiple(depth):
            raise CvtoolError(f"pose_heatmap of depth {depth} needs crops of at least {stride_multiple(depth)} px "
                              f"a side, got {'x'.join(str(s) for s in sides)}", where="model.depth",
                              fix=f"use model.depth={max(1, min(sides).bit_length() - 3)} or larger crops")
    return PoseHeatmapNet(num_keypoints, in_channels, stacks=stacks, depth=depth, channels=channels)
