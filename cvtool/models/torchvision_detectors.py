"""torchvision's detectors, registered from one table: the R-CNN family (Keypoint R-CNN for task keypoints),
RetinaNet, FCOS, SSD300 and SSDlite.

Every builder takes the class count WITHOUT background; the background class some heads need is added here and
recorded as `model.label_offset` (the task adapter shifts labels by it). Sizes, anchors, sampling and
thresholds are config values passed straight to torchvision (its own keyword names).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

from torch import nn
from torchvision.models import detection
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.misc import FrozenBatchNorm2d

from cvtool.errors import CvtoolError
from cvtool.models.registry import register_model
from cvtool.models.weights import is_weights_file, load_weights_file, pretrained

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detector:
    builder: object  # torchvision builder function
    family: str  # rcnn | mask_rcnn | keypoint_rcnn | retinanet | fcos | ssd
    backbone: str  # torchvision name of the backbone classifier (its weights enum)
    min_size: int
    description: str
    anchor_levels: int = 5  # FPN levels (anchor sizes per level); 3 for the MobileNet FPN (all sizes on each)
    task: str = "detection"  # the registry task: detection, or keypoints (Keypoint R-CNN)


DETECTORS = {
    "faster_rcnn": Detector(detection.fasterrcnn_resnet50_fpn, "rcnn", "resnet50", 64,
                            "Faster R-CNN, ResNet-50-FPN (Ren et al. 2015; Lin et al. 2017)"),
    "faster_rcnn_v2": Detector(detection.fasterrcnn_resnet50_fpn_v2, "rcnn", "resnet50", 64,
                               "Faster R-CNN v2, ResNet-50-FPN with improved heads (Li et al. 2021)"),
    "faster_rcnn_mobilenet": Detector(detection.fasterrcnn_mobilenet_v3_large_fpn, "rcnn", "mobilenet_v3_large", 64,
                                      "Faster R-CNN, MobileNet-v3-Large FPN (high resolution)", anchor_levels=3),
    "faster_rcnn_mobilenet_320": Detector(detection.fasterrcnn_mobilenet_v3_large_320_fpn, "rcnn",
                                          "mobilenet_v3_large", 64,
                                          "Faster R-CNN, MobileNet-v3-Large FPN at 320 px (mobile)", anchor_levels=3),
    "mask_rcnn": Detector(detection.maskrcnn_resnet50_fpn, "mask_rcnn", "resnet50", 64,
                          "Mask R-CNN, ResNet-50-FPN (He et al. 2017): boxes + instance masks"),
    "keypoint_rcnn": Detector(detection.keypointrcnn_resnet50_fpn, "keypoint_rcnn", "resnet50", 64,
                              "Keypoint R-CNN, ResNet-50-FPN (He et al. 2017): boxes + K keypoints per instance",
                              task="keypoints"),
    "retinanet": Detector(detection.retinanet_resnet50_fpn, "retinanet", "resnet50", 64,
                          "RetinaNet, ResNet-50-FPN, focal loss (Lin et al. 2017)"),
    "fcos": Detector(detection.fcos_resnet50_fpn, "fcos", "resnet50", 64,
                     "FCOS, ResNet-50-FPN, anchor-free (Tian et al. 2019)"),
    "ssd300": Detector(detection.ssd300_vgg16, "ssd", "vgg16", 300, "SSD300, VGG-16 (Liu et al. 2016)"),
    "ssdlite": Detector(detection.ssdlite320_mobilenet_v3_large, "ssd", "mobilenet_v3_large", 64,
                        "SSDlite, MobileNet-v3-Large (Sandler et al. 2018)"),
}
LABEL_OFFSET = {"rcnn": 1, "mask_rcnn": 1, "keypoint_rcnn": 1, "ssd": 1, "retinanet": 0, "fcos": 0}  # background 0?
RCNN_FAMILIES = ("rcnn", "mask_rcnn", "keypoint_rcnn")  # two-stage: RoI pooling, box (and mask/keypoint) heads
PUBLISHED_KEYPOINT_HEAD = (512, 8)  # torchvision's (and the COCO weights'): eight 3x3 convs of 512 channels
NORMS = ("auto", "gn")


def _anchors(spec: Detector, sizes: list[int] | None, ratios: list[float], levels: int) -> AnchorGenerator | None:
    """The anchor generator for `sizes`: one size per FPN level (RetinaNet adds 2 octave scales per level), or all
    sizes on each of the MobileNet FPN's 3 maps. None for anchor-free FCOS and SSD (default boxes)."""
    if sizes is None or spec.family in ("fcos", "ssd"):
        return None
    if spec.family == "retinanet":
        per_level = tuple((s, round(s * 2 ** (1 / 3)), round(s * 2 ** (2 / 3))) for s in sizes)
    elif levels != len(sizes):
        per_level = (tuple(sizes),) * levels
    else:
        per_level = tuple((s,) for s in sizes)
    return AnchorGenerator(per_level, (tuple(ratios),) * len(per_level))


def _group_norm(model: nn.Module, groups: int = 32) -> None:
    """GroupNorm in place of every BatchNorm, and in the FPN (torchvision's v1 FPN has no norm layers): how He et
    al. (2019, "Rethinking ImageNet Pre-training") train FPN detectors from scratch."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d | FrozenBatchNorm2d):
                setattr(parent, name, nn.GroupNorm(groups, child.weight.shape[0]))
    fpn = model.backbone.fpn
    if not any(isinstance(m, nn.GroupNorm) for m in fpn.modules()):
        model.backbone.fpn = FeaturePyramidNetwork([b[0].in_channels for b in fpn.inner_blocks],
                                                   fpn.layer_blocks[0][0].out_channels, extra_blocks=fpn.extra_blocks,
                                                   norm_layer=partial(nn.GroupNorm, groups))


def _check_norm(spec: Detector, name: str, norm: str, pretrained_weights: bool) -> None:
    if norm not in NORMS:
        raise CvtoolError(f"unknown norm {norm!r} for {name}", where="model.norm", fix=f"use one of {', '.join(NORMS)}")
    if norm == "gn" and spec.backbone != "resnet50":
        raise CvtoolError(f"norm=gn is for the ResNet-50-FPN detectors, not {name}", where="model.norm",
                          fix="use model.norm=auto")
    if norm == "gn" and pretrained_weights:
        raise CvtoolError("norm=gn trains from scratch: the pretrained weights hold BatchNorm layers",
                          where="model.norm", fix="use model.norm=auto with model.weights / model.weights_backbone")


def _resize_ssd(model: nn.Module, size: int, min_ratio: float, max_ratio: float) -> None:
    """SSD's fixed input size and default-box scales (same aspect ratios, so the heads keep their shapes)."""
    old = model.anchor_generator
    model.anchor_generator = DefaultBoxGenerator(old.aspect_ratios, min_ratio=min_ratio, max_ratio=max_ratio,
                                                 steps=None, clip=old.clip)
    t = model.transform
    model.transform = GeneralizedRCNNTransform(size, size, t.image_mean, t.image_std, size_divisible=1,
                                               fixed_size=(size, size))


def _check_pyramid(spec: Detector, name: str, layers, channels, coco_weights: bool) -> None:
    """Refuse a pyramid (`returned_layers`, `fpn_channels`) other than the ResNet-50-FPN R-CNN's can have."""
    if layers is None and channels is None:
        return
    key = "model.returned_layers" if layers is not None else "model.fpn_channels"
    if spec.family not in RCNN_FAMILIES or spec.backbone != "resnet50":
        raise CvtoolError(f"{key.split('.')[1]} is for the ResNet-50-FPN R-CNNs, not {name}", where=key,
                          fix="remove the key")
    stages = isinstance(layers, list | tuple) and all(isinstance(k, int) and not isinstance(k, bool) for k in layers)
    if layers is not None and not (stages and layers and list(layers) == sorted(set(layers))
                                   and set(layers) <= {1, 2, 3, 4}):
        raise CvtoolError(f"returned_layers must be increasing ResNet stages from 1-4, got {layers!r}",
                          where="model.returned_layers", fix="use [1, 2, 3, 4] (torchvision's) or [2, 3, 4] (no P2)")
    if channels is not None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 32 or channels % 32:
            raise CvtoolError(f"fpn_channels must be a multiple of 32 (GroupNorm's groups), got {channels!r}",
                              where="model.fpn_channels", fix="use 256 (torchvision's) or 128")
        if channels != 256 and spec.builder is detection.fasterrcnn_resnet50_fpn_v2:
            raise CvtoolError(f"{name}'s convolutional box head is built for 256 channels", where="model.fpn_channels",
                              fix="use model.fpn_channels=256, or model=faster_rcnn")
    if coco_weights and ((layers is not None and list(layers) != [1, 2, 3, 4]) or channels not in (None, 256)):
        raise CvtoolError("the COCO weights hold a 256-channel FPN over ResNet stages [1, 2, 3, 4]", where=key,
                          fix="use returned_layers=[1,2,3,4] and fpn_channels=256 with model.weights, "
                          "or model.weights_backbone")


def _pyramid_heads(spec: Detector, channels: int, anchors_per_location: int) -> dict:
    """RPN, box and mask heads over a `channels`-wide pyramid (torchvision's v1 heads, which it sizes for 256)."""
    from torchvision.models.detection.faster_rcnn import RPNHead, TwoMLPHead
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

    heads = {"rpn_head": RPNHead(channels, anchors_per_location), "box_head": TwoMLPHead(channels * 7 * 7, 1024)}
    if spec.family == "mask_rcnn":
        heads["mask_head"] = MaskRCNNHeads(channels, (256, 256, 256, 256), 1)
    return heads


def _roi_pools(model: nn.Module) -> list[nn.Module]:
    """The RoI poolers of an R-CNN: box, and mask or keypoint where it has them."""
    heads = model.roi_heads
    pools = (heads.box_roi_pool, getattr(heads, "mask_roi_pool", None), getattr(heads, "keypoint_roi_pool", None))
    return [pool for pool in pools if pool is not None]


def _set_pyramid(model: nn.Module, layers: list[int], channels: int) -> None:
    """The FPN over ResNet stages `layers` (torchvision's `returned_layers`), `channels` wide. [2, 3, 4] drops P2,
    whose stride-4 convolutions cost as much as the rest of the pyramid; 128 channels quarter the FPN's and the RPN
    head's convolutions. The RoI pools read the levels left."""
    names = [str(i) for i in range(len(layers))]
    model.backbone.body.return_layers = {f"layer{k}": name for k, name in zip(layers, names, strict=True)}
    model.backbone.fpn = FeaturePyramidNetwork([256 * 2 ** (k - 1) for k in layers],  # ResNet-50's stage widths
                                               channels, extra_blocks=model.backbone.fpn.extra_blocks)
    model.backbone.out_channels = channels
    for pool in _roi_pools(model):
        pool.featmap_names = names  # (its scales are worked out on the first call)


def _check_roi_sampling(spec: Detector, name: str, ratio: int | None, fraction) -> None:
    """Refuse bad RoI sampling values before anything is built."""
    if ratio is not None:
        if spec.family not in RCNN_FAMILIES:
            raise CvtoolError(f"{name} has no RoI pooling", where="model.roi_sampling_ratio", fix="remove the key")
        if not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < 0:
            raise CvtoolError(f"roi_sampling_ratio must be an integer >= 0, got {ratio!r}",
                              where="model.roi_sampling_ratio",
                              fix="use 2 (torchvision's), 1 (faster on CPUs) or 0 (adaptive)")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise CvtoolError(f"box_positive_fraction must be a number in (0, 1], got {fraction!r}",
                          where="model.box_positive_fraction",
                          fix="use 0.25 (torchvision's) or 0.75 (the shapes recipe)")


def _set_roi_sampling(model: nn.Module, ratio: int) -> None:
    """RoIAlign's sampling points per bin side (torchvision: 2; 1 quarters its CPU-bound backward)."""
    for pool in _roi_pools(model):
        pool.sampling_ratio = ratio


def _keypoint_args(spec: Detector, name: str, num_keypoints: int | None, head_channels: int | None,
                   head_layers: int | None, coco_weights: bool, fpn_channels: int) -> dict:
    """torchvision keyword arguments for Keypoint R-CNN's keypoint count and head (`head_layers` 3x3 convs of
    `head_channels` over the `fpn_channels`-wide 14x14 RoI features); none for the other detectors."""
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNHeads

    given = {key: value for key, value in (("num_keypoints", num_keypoints), ("keypoint_head_channels", head_channels),
                                           ("keypoint_head_layers", head_layers)) if value is not None}
    if spec.family != "keypoint_rcnn":
        if given:
            key = next(iter(given))
            raise CvtoolError(f"{key} is for keypoint_rcnn, not {name}", where=f"model.{key}", fix="remove the key")
        return {}
    for key, value in given.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CvtoolError(f"{key} must be an integer >= 1, got {value!r}", where=f"model.{key}",
                              fix="keypoints: the category's keypoint count; head: 512 channels x 8 layers "
                                  "(torchvision's) or e.g. 128 x 4 on a CPU")
    head = (head_channels or PUBLISHED_KEYPOINT_HEAD[0], head_layers or PUBLISHED_KEYPOINT_HEAD[1])
    if coco_weights:
        if head != PUBLISHED_KEYPOINT_HEAD:
            raise CvtoolError("the COCO weights hold the published keypoint head (eight 3x3 convs of 512 channels)",
                              where="model.keypoint_head_channels",
                              fix="use keypoint_head_channels=512 and keypoint_head_layers=8 with model.weights")
        return {}  # (a keypoint count other than COCO's gets a new predictor after loading)
    if head == PUBLISHED_KEYPOINT_HEAD and fpn_channels == 256:
        return {"num_keypoints": num_keypoints}
    channels, layers = head
    return {"num_keypoints": num_keypoints, "keypoint_head": KeypointRCNNHeads(fpn_channels, [channels] * layers)}


def _fit_keypoint_predictor(model: nn.Module) -> None:
    """A keypoint predictor reading the head's width (torchvision's builder makes one for 512 channels)."""
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor

    heads = model.roi_heads
    width = [m for m in heads.keypoint_head.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
    if heads.keypoint_predictor.kps_score_lowres.in_channels != width:
        heads.keypoint_predictor = KeypointRCNNPredictor(width, heads.keypoint_predictor.out_channels)


def _replace_heads(model: nn.Module, spec: Detector, num_classes: int, num_keypoints: int | None) -> None:
    """COCO-pretrained R-CNN heads -> `num_classes` (+ background) outputs (and `num_keypoints` keypoints), for
    fine-tuning. Keypoint R-CNN keeps the COCO predictors that already fit (person, 17 keypoints)."""
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
    from torchvision.models.detection.keypoint_rcnn import KeypointRCNNPredictor
    from torchvision.models.detection.mask_rcnn import MaskRCNNPredictor

    if spec.family not in RCNN_FAMILIES:
        raise CvtoolError(f"fine-tuning COCO weights to {num_classes} classes is supported for the R-CNN family",
                          where="model.weights", fix="use model.weights_backbone=... (ImageNet) for this model")
    box = model.roi_heads.box_predictor
    if spec.family != "keypoint_rcnn" or box.cls_score.out_features != num_classes + 1:
        model.roi_heads.box_predictor = FastRCNNPredictor(box.cls_score.in_features, num_classes + 1)
    if spec.family == "keypoint_rcnn" and num_keypoints not in (None, model.roi_heads.keypoint_predictor.out_channels):
        channels = model.roi_heads.keypoint_predictor.kps_score_lowres.in_channels
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(channels, num_keypoints)
    if spec.family == "mask_rcnn":
        mask = model.roi_heads.mask_predictor
        model.roi_heads.mask_predictor = MaskRCNNPredictor(mask.conv5_mask.in_channels, 256, num_classes + 1)


def build_detector(spec: Detector, name: str, num_classes: int, in_channels: int = 3, weights: str | None = None,
                   *, weights_backbone: str | None = None, anchor_sizes: list[int] | None = None,
                   aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0), size: int | None = None,
                   min_ratio: float = 0.15, max_ratio: float = 0.9, bn_momentum: float | None = None,
                   norm: str = "auto", roi_sampling_ratio: int | None = None,
                   returned_layers: list[int] | None = None, fpn_channels: int | None = None,
                   num_keypoints: int | None = None, keypoint_head_channels: int | None = None,
                   keypoint_head_layers: int | None = None, **kwargs) -> nn.Module:
    if in_channels != 3:
        raise CvtoolError(f"{name} takes RGB images, got {in_channels} channel(s)", where="dataset.channels",
                          fix="use an RGB dataset")
    _check_norm(spec, name, norm, weights is not None or weights_backbone is not None)
    _check_roi_sampling(spec, name, roi_sampling_ratio, kwargs.get("box_positive_fraction", 0.25))
    _check_pyramid(spec, name, returned_layers, fpn_channels, weights is not None)
    keypoint_args = _keypoint_args(spec, name, num_keypoints, keypoint_head_channels, keypoint_head_layers,
                                   weights is not None, fpn_channels or 256)
    offset = LABEL_OFFSET[spec.family]
    backbone_file = weights_backbone if weights_backbone and is_weights_file(weights_backbone) else None
    levels = len(returned_layers) + 1 if returned_layers else spec.anchor_levels  # (+1: the max-pooled P6)
    anchors = _anchors(spec, anchor_sizes, list(aspect_ratios), levels)
    args = {"weights_backbone": None if backbone_file else pretrained(spec.backbone, weights_backbone), **kwargs,
            **keypoint_args}
    if fpn_channels not in (None, 256):
        args.update(_pyramid_heads(spec, fpn_channels, len(aspect_ratios)))
    try:
        if weights is not None:
            model = spec.builder(weights=pretrained(name_of(spec), weights), **args)
            _replace_heads(model, spec, num_classes, num_keypoints)
        else:
            model = spec.builder(weights=None, num_classes=num_classes + offset, **args)
            if "keypoint_head" in args:
                _fit_keypoint_predictor(model)
    except TypeError as err:
        raise CvtoolError(f"bad option for {name}: {err}", where="model",
                          fix="see conf/model/<name>.yaml for its options (torchvision's keyword names)") from err
    if anchors is not None:  # the builders make their own generator; ours has the same anchors per location
        owner = model if spec.family == "retinanet" else model.rpn
        if anchors.num_anchors_per_location()[0] != owner.anchor_generator.num_anchors_per_location()[0]:
            raise CvtoolError(f"{name} needs {levels} anchor sizes x {len(aspect_ratios)} aspect ratios",
                              where="model.anchor_sizes",
                              fix=f"give one size per FPN level ({levels}), e.g. [32, 64, 128, 256, 512][-{levels}:], "
                              "and 3 aspect ratios")
        owner.anchor_generator = anchors
    if backbone_file:  # a classifier's state dict goes into the FPN body (or the whole backbone)
        load_weights_file(getattr(model.backbone, "body", model.backbone), backbone_file)
    layers, channels = list(returned_layers or (1, 2, 3, 4)), fpn_channels or 256
    if (layers, channels) != ([1, 2, 3, 4], 256):  # (torchvision's pyramid, COCO weights and all, is kept as built)
        _set_pyramid(model, layers, channels)
    if spec.family == "ssd" and size is not None:
        _resize_ssd(model, size, min_ratio, max_ratio)
    if norm == "gn":
        _group_norm(model)
    if roi_sampling_ratio is not None:
        _set_roi_sampling(model, roi_sampling_ratio)
    if bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = bn_momentum
    model.label_offset = offset
    return model


def name_of(spec: Detector) -> str:
    """torchvision's registered name of a detector builder (its weights enum is looked up by it)."""
    return spec.builder.__name__


for _name, _spec in DETECTORS.items():
    register_model(_name, task=_spec.task, min_size=_spec.min_size, description=_spec.description)(
        partial(build_detector, _spec, _name))
