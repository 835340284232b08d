"""Fast R-CNN (Girshick 2015): one shared feature map, single-level RoI pooling of region proposals, a two-layer head,
class scores (classes + background) and per-class box regression.

Built from torchvision's R-CNN pieces: GeneralizedRCNNTransform (normalising, resizing; the proposals are scaled with
their image), RoIHeads with its sampler, box coder, losses and post-processing. What differs is the paper's: the RoI
labels (foreground at IoU >= 0.5, background in [0.1, 0.5); RoIs under 0.1 are never sampled), RoI max pooling over
one map (`roi_op="align"`: RoIAlign), an optional dropout in the head. With `proposals="rpn"` the same trunk and head
take torchvision's RPN instead: Faster R-CNN, for a controlled comparison of the proposal sources.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import clip_boxes_to_image, remove_small_boxes, roi_align, roi_pool

from cvtool.errors import CvtoolError
from cvtool.models.feature_trunks import feature_trunk, group_norm
from cvtool.models.registry import register_model
from cvtool.models.weights import reject_weights_name

ROI_OPS = ("pool", "align")
NORMS = ("auto", "gn")
MIN_PROPOSAL_SIDE = 1e-2  # pixels; thinner proposals (e.g. clipped away entirely) are dropped
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class FastRCNNMatcher(Matcher):
    """Fast R-CNN's RoI labels, in the codes torchvision's RoIHeads reads: IoU >= `fg_iou` with a ground-truth box:
    that box; best IoU in [`bg_iou_low`, `fg_iou`): BELOW_LOW_THRESHOLD (background, label 0); under `bg_iou_low`:
    BETWEEN_THRESHOLDS (label -1: never sampled; the paper's hard-example heuristic)."""

    def __init__(self, fg_iou: float, bg_iou_low: float):
        super().__init__(fg_iou, fg_iou, allow_low_quality_matches=False)
        self.bg_iou_low = bg_iou_low

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        matches = super().__call__(match_quality_matrix)
        return matches.masked_fill(match_quality_matrix.max(dim=0).values < self.bg_iou_low, self.BETWEEN_THRESHOLDS)


class SingleLevelRoIPool(nn.Module):
    """RoI pooling over one feature map, called as torchvision's MultiScaleRoIAlign: (features {"0": map}, per-image
    proposals, image sizes) -> (R, C, size, size). "pool": max over quantised bins (Fast R-CNN's RoIPool); "align":
    bilinear samples (RoIAlign, aligned: pixel i spans [i, i + 1)). In fp32 under bf16 autocast."""

    def __init__(self, op: str, size: int, stride: int, sampling_ratio: int):
        super().__init__()
        self.op, self.size, self.scale, self.sampling_ratio = op, size, 1.0 / stride, sampling_ratio

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list) -> Tensor:
        x, boxes = features["0"].float(), [p.float() for p in proposals]
        if self.op == "pool":
            return roi_pool(x, boxes, self.size, self.scale)
        return roi_align(x, boxes, self.size, self.scale, self.sampling_ratio, aligned=True)


class MLPHead(TwoMLPHead):
    """The paper's fc6 and fc7 (ReLU, then dropout where `dropout` > 0, as in its VGG16 head)."""

    def __init__(self, in_features: int, width: int, dropout: float):
        super().__init__(in_features, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.dropout(F.relu(self.fc6(x.flatten(start_dim=1))))
        return self.dropout(F.relu(self.fc7(x)))


class FloatPredictor(FastRCNNPredictor):
    """Class scores and per-class box deltas in fp32, so that losses and box decoding are fp32 under bf16 autocast."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        scores, deltas = super().forward(x)
        return scores.float(), deltas.float()


class FloatRPNHead(RPNHead):
    """torchvision's RPN head with fp32 outputs (its anchors are decoded in the deltas' dtype)."""

    def forward(self, x: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        logits, deltas = super().forward(x)
        return [t.float() for t in logits], [t.float() for t in deltas]


class FastRCNN(GeneralizedRCNN):
    """trunk -> RoI pooling -> head, with torchvision's detector contract: train mode `forward(images, targets,
    proposals)` -> losses; eval mode -> per-image {"boxes", "scores", "labels"} in input-image pixels. `rpn` None:
    external proposals (per image (n, 4) XYXY pixels of that image, ranked; the first `train_proposals` /
    `test_proposals` are kept); else the RPN's, and `proposals` must not be given."""

    label_offset = 1  # class 0 is the background

    def __init__(self, backbone: nn.Module, rpn: nn.Module | None, roi_heads: RoIHeads,
                 transform: GeneralizedRCNNTransform, train_proposals: int, test_proposals: int):
        super().__init__(backbone, rpn, roi_heads, transform)
        self.uses_proposals = rpn is None
        self.train_proposals, self.test_proposals = train_proposals, test_proposals
        explained = getattr(backbone, "explained_layer", None)
        self.explained_layer = f"backbone.{explained}" if explained else None

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None,
                proposals: Sequence[Tensor] | None = None):
        self._check_proposals(images, proposals)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        batch, targets = self.transform(images, targets)
        features = {"0": self.backbone(batch.tensors)}
        if self.rpn is None:
            boxes, losses = self.scaled_proposals(proposals, original_sizes, batch.image_sizes), {}
        else:
            boxes, losses = self.rpn(batch, features, targets)
        detections, head_losses = self.roi_heads(features, boxes, batch.image_sizes, targets)
        if self.training:
            return {**head_losses, **losses}
        return self.transform.postprocess(detections, batch.image_sizes, original_sizes)

    def scaled_proposals(self, proposals: Sequence[Tensor], original_sizes: list[tuple[int, int]],
                         image_sizes: list[tuple[int, int]]) -> list[Tensor]:
        """Each image's first train/test_proposals boxes, scaled as the transform resized it, clipped to it, without
        degenerate boxes."""
        keep = self.train_proposals if self.training else self.test_proposals
        device = self.roi_heads.box_predictor.cls_score.weight.device
        scaled = []
        for boxes, old, new in zip(proposals, original_sizes, image_sizes, strict=True):
            boxes = clip_boxes_to_image(resize_boxes(torch.as_tensor(boxes[:keep], dtype=torch.float32,
                                                                     device=device), old, new), new)
            scaled.append(boxes[remove_small_boxes(boxes, MIN_PROPOSAL_SIDE)])
        return scaled

    def _check_proposals(self, images: list[Tensor], proposals: Sequence[Tensor] | None) -> None:
        if not self.uses_proposals:
            if proposals is not None:
                raise CvtoolError("this fast_rcnn makes its own proposals (an RPN) but was given proposals",
                                  where="model.proposals", fix="set model.proposals to a method or a file")
            return
        if proposals is None:
            raise CvtoolError("fast_rcnn needs region proposals for every image, got none", where="model.proposals",
                              fix="set model.proposals to a method (selective_search, edge, kmeans) or a proposal "
                                  "file, or to rpn (Faster R-CNN)")
        if len(proposals) != len(images):
            raise CvtoolError(f"got proposals for {len(proposals)} images but {len(images)} images",
                              where="model.proposals", fix="pass one (n, 4) box array per image")
        for i, boxes in enumerate(proposals):
            if tuple(boxes.shape[1:]) != (4,) or boxes.dim() != 2:
                raise CvtoolError(f"the proposals of image {i} have shape {tuple(boxes.shape)}, not (n, 4)",
                                  where="model.proposals", fix="pass XYXY pixel boxes, one (n, 4) array per image")


def _roi_heads(trunk: nn.Module, channels: int, num_classes: int, *, roi_op: str, roi_size: int,
               sampling_ratio: int, head_width: int, dropout: float, rois_per_image: int, positive_fraction: float,
               fg_iou: float, bg_iou_low: float, score_thresh: float, nms_thresh: float,
               detections_per_img: int) -> RoIHeads:
    """torchvision's RoIHeads with the single-level pool, the head and Fast R-CNN's RoI labels."""
    heads = RoIHeads(SingleLevelRoIPool(roi_op, roi_size, trunk.stride, sampling_ratio),
                     MLPHead(channels * roi_size**2, head_width, dropout), FloatPredictor(head_width, num_classes + 1),
                     fg_iou, fg_iou, rois_per_image, positive_fraction, None, score_thresh, nms_thresh,
                     detections_per_img)
    heads.proposal_matcher = FastRCNNMatcher(fg_iou, bg_iou_low)
    return heads


def _rpn(channels: int, anchor_sizes: Sequence[int], aspect_ratios: Sequence[float], batch_size_per_image: int,
         pre_nms: tuple[int, int], post_nms: tuple[int, int], nms_thresh: float) -> RegionProposalNetwork:
    """torchvision's RPN on the trunk's one map; pre/post_nms: (train, test) proposals per image."""
    anchors = AnchorGenerator((tuple(anchor_sizes),), (tuple(aspect_ratios),))
    return RegionProposalNetwork(anchors, FloatRPNHead(channels, anchors.num_anchors_per_location()[0]), 0.7, 0.3,
                                 batch_size_per_image, 0.5, dict(zip(("training", "testing"), pre_nms, strict=True)),
                                 dict(zip(("training", "testing"), post_nms, strict=True)), nms_thresh)


def _check(ok: bool, key: str, problem: str, fix: str) -> None:
    if not ok:
        raise CvtoolError(problem, where=f"model.{key}", fix=fix)


def _check_options(in_channels: int, norm: str, roi_op: str, positive_fraction: float, fg_iou: float,
                   bg_iou_low: float, counts: Mapping[str, int], image_mean: Sequence[float],
                   backbone_options: Mapping[str, object]) -> None:
    _check(roi_op in ROI_OPS, "roi_op", f"unknown roi_op {roi_op!r}", "use pool (RoIPool, the paper's) or align")
    _check(norm in NORMS, "norm", f"unknown norm {norm!r}", "use auto (the backbone's own) or gn (GroupNorm)")
    _check(not (norm == "gn" and backbone_options.get("weights")), "norm",
           "norm=gn trains from scratch: the pretrained backbone weights hold BatchNorm layers",
           "use model.norm=auto with pretrained backbone weights")
    _check(0 < positive_fraction <= 1, "positive_fraction", f"positive_fraction must be in (0, 1], got "
           f"{positive_fraction}", "use 0.25 (the paper's)")
    _check(0 <= bg_iou_low < fg_iou <= 1, "bg_iou_low", f"need 0 <= bg_iou_low < fg_iou <= 1, got {bg_iou_low} and "
           f"{fg_iou}", "use bg_iou_low=0.1 and fg_iou=0.5 (the paper's)")
    for key, value in counts.items():
        _check(isinstance(value, int) and not isinstance(value, bool) and value >= 1, key,
               f"{key} must be an integer >= 1, got {value!r}", "e.g. 2000 train / 1000 test proposals, 64 RoIs")
    _check(len(image_mean) in (1, in_channels), "image_mean", f"image_mean has {len(image_mean)} values for "
           f"{in_channels}-channel images", "give one value per channel (the dataset's mean and std)")


@register_model("fast_rcnn", task="detection", min_size=32,
                description="Fast R-CNN (Girshick 2015): any classifier trunk, RoI pooling of external proposals "
                            "(selective search, k-means 'minus R', a file) or an RPN, two-layer head")
def fast_rcnn(num_classes: int, in_channels: int = 3, weights: str | None = None, *, backbone: str = "shapes_cnn",
              backbone_options: Mapping[str, object] | None = None, stride: int = 8, norm: str = "auto",
              roi_op: str = "pool", roi_size: int = 7, sampling_ratio: int = 2, head_width: int = 256,
              dropout: float = 0.0, proposals: str = "external", train_proposals: int = 2000,
              test_proposals: int = 1000, rois_per_image: int = 64, positive_fraction: float = 0.25,
              fg_iou: float = 0.5, bg_iou_low: float = 0.1, box_score_thresh: float = 0.05,
              box_nms_thresh: float = 0.3, box_detections_per_img: int = 100, min_size: int | list[int] = 128,
              max_size: int = 1333, image_mean: Sequence[float] = IMAGENET_MEAN,
              image_std: Sequence[float] = IMAGENET_STD, anchor_sizes: Sequence[int] = (16, 32, 64),
              aspect_ratios: Sequence[float] = (0.5, 1.0, 2.0), rpn_batch_size_per_image: int = 256,
              rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
              rpn_nms_thresh: float = 0.7) -> FastRCNN:
    """`backbone` (a registered classifier, built with `backbone_options`, e.g. weights=DEFAULT) cut at output stride
    <= `stride`; `norm=gn`: its BatchNorm layers become GroupNorm. `proposals`: "rpn" = Faster R-CNN on the same trunk
    and head, anything else (the proposal method or file the task reads) = external proposals. `min_size`/`max_size`:
    torchvision's resize (shorter side; a list: one picked per training step)."""
    reject_weights_name("fast_rcnn", weights)
    options = dict(backbone_options or {})
    _check_options(in_channels, norm, roi_op, positive_fraction, fg_iou, bg_iou_low,
                   {"train_proposals": train_proposals, "test_proposals": test_proposals,
                    "rois_per_image": rois_per_image, "roi_size": roi_size, "head_width": head_width},
                   image_mean, options)
    trunk, channels = feature_trunk(backbone, in_channels, options, stride)
    if norm == "gn":
        group_norm(trunk)
    heads = _roi_heads(trunk, channels, num_classes, roi_op=roi_op, roi_size=roi_size, sampling_ratio=sampling_ratio,
                       head_width=head_width, dropout=dropout, rois_per_image=rois_per_image,
                       positive_fraction=positive_fraction, fg_iou=fg_iou, bg_iou_low=bg_iou_low,
                       score_thresh=box_score_thresh, nms_thresh=box_nms_thresh,
                       detections_per_img=box_detections_per_img)
    rpn = None
    if proposals == "rpn":
        rpn = _rpn(channels, anchor_sizes, aspect_ratios, rpn_batch_size_per_image,
                   (rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test), (train_proposals, test_proposals),
                   rpn_nms_thresh)
    sizes = tuple(min_size) if isinstance(min_size, Sequence) else (min_size,)
    transform = GeneralizedRCNNTransform(sizes, max_size, list(image_mean), list(image_std))
    return FastRCNN(trunk, rpn, heads, transform, train_proposals, test_proposals)
