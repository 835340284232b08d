"""torchvision's semantic segmenters: FCN and DeepLabv3 (ResNet or MobileNetV3 backbone) and LR-ASPP.

torchvision's models return ``{"out": ..., "aux": ...}``; cvtool's segmentation contract is the logits Tensor
(N, classes, H, W) at the input size, or ``{"out", "aux"}`` in train mode when the model has an auxiliary head.
The builders keep torchvision's modules under their names (``backbone``, ``classifier``, ``aux_classifier``), so
state dicts, and thus torchvision's weight files, have the same keys. Pretrained ``weights`` (COCO with the 21
VOC classes) get fresh last convolutions for another class count; ``weights_backbone`` is an ImageNet enum name
or a local classifier file.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import segmentation

from cvtool.errors import CvtoolError
from cvtool.models.registry import register_model
from cvtool.models.torchvision_classifiers import conv_like, replace_first_conv
from cvtool.models.weights import is_weights_file, load_weights_file, pretrained

VOC_CLASSES = 21  # the class count of torchvision's pretrained segmenters (COCO images, VOC labels)
BACKBONES = {
    "fcn": ("resnet50", "resnet101"),
    "deeplabv3": ("resnet50", "resnet101", "mobilenet_v3_large"),
    "lraspp": ("mobilenet_v3_large",),
}
DESCRIPTIONS = {
    "fcn": "FCN (Long et al. 2015) on a dilated ResNet, torchvision builder",
    "deeplabv3": "DeepLabv3 (Chen et al. 2017): ASPP on a dilated ResNet or MobileNetV3, torchvision builder",
    "lraspp": "LR-ASPP (Howard et al. 2019) on MobileNetV3-Large, torchvision builder",
}


class TorchvisionSegmenter(nn.Module):
    """torchvision's segmentation modules with cvtool's output contract; aux logits only in train mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.backbone = model.backbone
        self.classifier = model.classifier
        self.aux_classifier = getattr(model, "aux_classifier", None)
        self.takes_features = isinstance(model, segmentation.LRASPP)  # its head reads the "low" and "high" maps

    def forward(self, x: Tensor) -> Tensor | dict[str, Tensor]:
        size = x.shape[-2:]
        features = self.backbone(x)
        out = self.classifier(features if self.takes_features else features["out"])
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=False)
        if not self.training or self.aux_classifier is None:
            return out
        aux = F.interpolate(self.aux_classifier(features["aux"]), size=size, mode="bilinear", align_corners=False)
        return {"out": out, "aux": aux}



def _replace_last_convs(model: nn.Module, num_classes: int) -> None:
    """Fresh class-score convolutions (main and auxiliary head) for fine-tuning to ``num_classes``."""
    if isinstance(model, segmentation.LRASPP):
        heads = [(model.classifier, "low_classifier"), (model.classifier, "high_classifier")]
    else:  # FCNHead and DeepLabHead are Sequentials ending in the 1x1 class-score conv
        heads = [(model.classifier, "4"), (model.aux_classifier, "4")]
    for head, leaf in heads:
        if head is not None:
            setattr(head, leaf, conv_like(getattr(head, leaf), out_channels=num_classes))


def _load_backbone_file(backbone: nn.Module, backbone_name: str, path: str) -> None:
    """A classifier's state dict into the backbone (MobileNet's keys carry its ``features.`` prefix)."""
    if backbone_name.startswith("mobilenet"):
        holder = nn.Module()
        holder.features = backbone
        load_weights_file(holder, path)
    else:
        load_weights_file(backbone, path)


def build_segmenter(arch: str, num_classes: int, in_channels: int = 3, weights: str | None = None, *,
                    backbone: str, aux_loss: bool = False, weights_backbone: str | None = None) -> nn.Module:
    """torchvision's ``{arch}_{backbone}``; ``weights`` is its enum name, ``weights_backbone`` an enum or a file."""
    if backbone not in BACKBONES[arch]:
        raise CvtoolError(f"{arch} has no backbone {backbone!r}", where="model.backbone",
                          fix=f"use one of {', '.join(BACKBONES[arch])}")
    name = f"{arch}_{backbone}"
    tv_builder = getattr(segmentation, name)
    backbone_file = weights_backbone if weights_backbone and is_weights_file(weights_backbone) else None
    if weights is not None:  # torchvision insists on its 21 classes and, for FCN/DeepLab, on the aux head
        extra = {} if arch == "lraspp" else {"aux_loss": True}
        model = tv_builder(weights=pretrained(name, weights), progress=False, **extra)
        if not aux_loss:
            model.aux_classifier = None
        if num_classes != VOC_CLASSES:
            _replace_last_convs(model, num_classes)
    else:
        extra = {} if arch == "lraspp" else {"aux_loss": aux_loss}
        enum = None if backbone_file else pretrained(backbone, weights_backbone)
        model = tv_builder(weights=None, num_classes=num_classes, weights_backbone=enum, progress=False, **extra)
    if backbone_file:
        _load_backbone_file(model.backbone, backbone, backbone_file)
    replace_first_conv(model.backbone, in_channels, pretrained=weights is not None or weights_backbone is not None)
    return TorchvisionSegmenter(model)


@register_model("fcn", task="segmentation", min_size=1, description=DESCRIPTIONS["fcn"])
def fcn(num_classes: int, in_channels: int = 3, weights: str | None = None, *, backbone: str = "resnet50",
        aux_loss: bool = True, weights_backbone: str | None = None) -> nn.Module:
    """FCN-ResNet (output stride 8); ``aux_loss`` adds an FCN head on layer3 (train mode only)."""
    return build_segmenter("fcn", num_classes, in_channels, weights, backbone=backbone, aux_loss=aux_loss,
                           weights_backbone=weights_backbone)


@register_model("deeplabv3", task="segmentation", min_size=1, description=DESCRIPTIONS["deeplabv3"])
def deeplabv3(num_classes: int, in_channels: int = 3, weights: str | None = None, *, backbone: str = "resnet50",
              aux_loss: bool = True, weights_backbone: str | None = None) -> nn.Module:
    """DeepLabv3 (output stride 8 on ResNet, 16 on MobileNetV3); ``aux_loss`` adds an FCN head (train mode only)."""
    return build_segmenter("deeplabv3", num_classes, in_channels, weights, backbone=backbone, aux_loss=aux_loss,
                           weights_backbone=weights_backbone)


@register_model("lraspp", task="segmentation", min_size=1, description=DESCRIPTIONS["lraspp"])
def lraspp(num_classes: int, in_channels: int = 3, weights: str | None = None, *,
           backbone: str = "mobilenet_v3_large", weights_backbone: str | None = None) -> nn.Module:
    """Lite R-ASPP: MobileNetV3 features at strides 8 and 16, no auxiliary head."""
    return build_segmenter("lraspp", num_classes, in_channels, weights, backbone=backbone,
                           weights_backbone=weights_backbone)

