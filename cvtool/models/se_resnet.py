"""SE-ResNet (Hu et al. 2017): torchvision's ResNet with squeeze-and-excitation in every residual unit."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from cvtool.models.registry import register_model
from cvtool.models.torchvision_classifiers import replace_first_conv, use_small_input_stem
from cvtool.models.weights import reject_weights_name

REDUCTION = 16  # the paper's default ratio r


class SqueezeExcitation(nn.Module):
    """Channel gates from global context: squeeze (average pool), excite (FC-ReLU-FC-sigmoid), rescale."""

    def __init__(self, channels: int, reduction: int = REDUCTION):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.squeeze = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def excitation(self, x: torch.Tensor) -> torch.Tensor:
        """Per-channel gates in (0, 1), shape (N, C, 1, 1)."""
        return torch.sigmoid(self.fc2(torch.relu(self.fc1(self.squeeze(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.excitation(x)


class _SEResidual:
    """Forward of an SE residual unit: the gates rescale the residual branch before the identity is added."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.se(self.residual(x)) + identity)


class SEBasicBlock(_SEResidual, BasicBlock):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.se = SqueezeExcitation(self.conv2.out_channels)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))


class SEBottleneck(_SEResidual, Bottleneck):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.se = SqueezeExcitation(self.conv3.out_channels)

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))


_LAYOUTS = {
    "se_resnet18": (SEBasicBlock, [2, 2, 2, 2]),
    "se_resnet34": (SEBasicBlock, [3, 4, 6, 3]),
    "se_resnet50": (SEBottleneck, [3, 4, 6, 3]),
}


def _se_resnet(
    name: str, num_classes: int, in_channels: int, weights: str | None, small_input: bool
) -> ResNet:
    reject_weights_name(name, weights)
    model = ResNet(*_LAYOUTS[name], num_classes=num_classes)
    replace_first_conv(model, in_channels, pretrained=False)
    if small_input:
        use_small_input_stem(model)
    return model


@register_model("se_resnet18", task="classification", min_size=1, description="SE-ResNet-18 (Hu et al. 2017)")
def se_resnet18(
    num_classes: int, in_channels: int = 3, weights: str | None = None, small_input: bool = False
) -> ResNet:
    """ResNet-18 layout (2-2-2-2 basic blocks) with SE gates."""
    return _se_resnet("se_resnet18", num_classes, in_channels, weights, small_input)


@register_model("se_resnet34", task="classification", min_size=1, description="SE-ResNet-34 (Hu et al. 2017)")
def se_resnet34(
    num_classes: int, in_channels: int = 3, weights: str | None = None, small_input: bool = False
) -> ResNet:
    """ResNet-34 layout (3-4-6-3 basic blocks) with SE gates."""
    return _se_resnet("se_resnet34", num_classes, in_channels, weights, small_input)


@register_model("se_resnet50", task="classification", min_size=1, description="SE-ResNet-50 (Hu et al. 2017)")
def se_resnet50(
    num_classes: int, in_channels: int = 3, weights: str | None = None, small_input: bool = False
) -> ResNet:
    """ResNet-50 layout (3-4-6-3 bottlenecks) with SE gates."""
    return _se_resnet("se_resnet50", num_classes, in_channels, weights, small_input)
