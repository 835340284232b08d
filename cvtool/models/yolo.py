"""YOLOv2 (Redmon & Farhadi 2016) in miniature: a Darknet-style single-stage detector with anchor boxes.

Mirrors torchvision's detection interface: in train mode ``model(images, targets)`` returns a dict of losses, in
eval mode ``model(images)`` returns one ``{"boxes", "scores", "labels"}`` dict per image. Labels are 0-based (no
background class); boxes are absolute xyxy pixels of each original image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes

from cvtool.errors import CvtoolError
from cvtool.models.registry import register_model
from cvtool.models.weights import reject_weights_name

STRIDES = (16, 32)  # output strides: 32 as in YOLOv2; 16 gives small inputs (128 px) a finer 8x8 grid
OBJ_PRIOR_BIAS = -4.6  # sigmoid(-4.6) ~ 0.01: every anchor starts out nearly sure it sees background
LOG_WH_CLIP = math.log(1000.0 / 16)  # cap on tw, th before exp (torchvision's box coder uses the same)
IGNORE_IOU = 0.6  # an unassigned prediction overlapping a ground truth this much is not pushed to background
MIN_BOX_SIDE = 1e-2  # boxes thinner than this (pixels) are dropped from targets and detections
DEFAULT_ANCHOR_RANGE = (0.08, 0.45)  # smallest and largest default anchor side, as fractions of image_size
DEFAULT_ASPECTS = (1.0, 2.0, 0.5)  # h / w, cycled over the default anchors


def conv_block(cin: int, cout: int, kernel: int = 3) -> nn.Sequential:
    """The Darknet unit: conv (no bias), BatchNorm, LeakyReLU(0.1)."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.LeakyReLU(0.1, inplace=True),
    )


def bottleneck_stage(cin: int, cout: int) -> nn.Sequential:
    """Darknet-19's 3x3 / 1x1 bottleneck / 3x3 pattern."""
    return nn.Sequential(conv_block(cin, cout), conv_block(cout, cout // 2, 1), conv_block(cout // 2, cout))


def wh_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of (w, h) shapes aligned at a corner: (N, 2) x (M, 2) -> (N, M)."""
    inter = torch.minimum(a[:, None], b[None]).prod(-1)
    return inter / (a.prod(-1)[:, None] + b.prod(-1)[None] - inter)


def default_anchors(num_anchors: int, image_size: int) -> Tensor:
    """(w, h) anchors with sides spaced geometrically over DEFAULT_ANCHOR_RANGE and cycling aspect ratios."""
    low, high = (math.log(f * image_size) for f in DEFAULT_ANCHOR_RANGE)
    sides = torch.linspace(low, high, num_anchors).exp()
    aspects = torch.tensor(DEFAULT_ASPECTS).repeat(math.ceil(num_anchors / len(DEFAULT_ASPECTS)))[:num_anchors]
    return torch.stack([sides / aspects.sqrt(), sides * aspects.sqrt()], 1)


def decode_boxes(t: Tensor, anchors: Tensor, stride: float, wh_clip: float = LOG_WH_CLIP) -> Tensor:
    """YOLOv2 decoding: raw (tx, ty, tw, th) of shape (..., H, W, A, 4) -> xyxy boxes in network-input pixels."""
    h, w = t.shape[-4:-2]
    gy, gx = torch.meshgrid(torch.arange(h, device=t.device), torch.arange(w, device=t.device), indexing="ij")
    grid = torch.stack([gx, gy], -1)[:, :, None]  # (H, W, 1, 2)
    xy = (t[..., :2].sigmoid() + grid) * stride
    wh = anchors * t[..., 2:4].clamp(max=wh_clip).exp()
    return torch.cat([xy - wh / 2, xy + wh / 2], -1)


def encode_boxes(boxes: Tensor, anchors: Tensor, stride: float, grid_hw: tuple[int, int]) -> tuple[Tensor, ...]:
    """Inverse of decode_boxes for (N, 4) xyxy boxes and their (N, 2) anchors.

    Returns the (x, y) cell holding each centre (N, 2), the centre's offset in that cell, i.e. the target of
    sigmoid(tx, ty), and the (tw, th) targets log(w / anchor_w), log(h / anchor_h).
    """
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 / stride
    last_cell = torch.tensor([grid_hw[1] - 1, grid_hw[0] - 1], device=boxes.device)
    cells = torch.minimum(centre.floor().long(), last_cell)
    return cells, centre - cells, torch.log((boxes[:, 2:] - boxes[:, :2]) / anchors)


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, iters: int = 100) -> np.ndarray:
    """YOLOv2 dimension clusters: k-means (k-means++ seeding) on box (w, h) with distance 1 - IoU.

    ``wh`` should be the training boxes' sizes at the network input (see ``YOLOv2``); boxes with a zero side are
    skipped. Returns (k, 2) centroids sorted by area.
    """
    wh = torch.as_tensor(np.asarray(wh, dtype=np.float64).reshape(-1, 2))
    wh = wh[(wh > 0).all(1)]
    if len(wh) < k:
        raise ValueError(f"need at least k={k} boxes with positive sides, got {len(wh)}")
    gen = torch.Generator().manual_seed(seed)
    centroids = wh[torch.randint(len(wh), (1,), generator=gen)]
    while len(centroids) < k:
        dist = 1 - wh_iou(wh, centroids).amax(1)
        centroids = torch.cat([centroids, wh[torch.multinomial(dist**2 + 1e-12, 1, generator=gen)]])
    for _ in range(iters):
        assign = wh_iou(wh, centroids).argmax(1)
        new = torch.stack([wh[assign == j].mean(0) if (assign == j).any() else centroids[j] for j in range(k)])
        if torch.allclose(new, centroids):
            break
        centroids = new
    return centroids[centroids.prod(1).argsort()].numpy()


class YOLOv2(nn.Module):
    """YOLOv2-style detector: Darknet-like backbone, passthrough layer, anchor-box head.

    Each image is resized (bilinear, no letterbox) to ``image_size`` squared; ``anchors`` are (w, h) in pixels at
    that size. With ``multiscale``, training picks one of those sizes (multiples of 32) per forward call and
    scales the anchors with it. Confidence is sigmoid(objectness) * softmax(class logits).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        width: int = 32,
        anchors: list[list[float]] | None = None,
        num_anchors: int = 5,
        image_size: int = 128,
        multiscale: list[int] | None = None,
        stride: int = 32,
        score_thresh: float = 0.01,
        nms_thresh: float = 0.45,
        detections_per_img: int = 100,
        image_mean=(0.485, 0.456, 0.406),
        image_std=(0.229, 0.224, 0.225),
    ):
        """``anchors``, when given, fix the number of anchors (``num_anchors`` is then ignored)."""
        super().__init__()
        if stride not in STRIDES:
            raise ValueError(f"stride must be one of {STRIDES}, got {stride}")
        for size in [image_size, *(multiscale or [])]:
            if size % 32:
                raise ValueError(f"image sizes must be multiples of 32, got {size}")
        anchors = default_anchors(num_anchors, image_size) if anchors is None else torch.as_tensor(anchors)
        self.register_buffer("anchors", anchors.float().reshape(-1, 2).clone())
        self.register_buffer("image_mean", torch.tensor(image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(-1, 1, 1), persistent=False)
        self.num_classes, self.image_size, self.multiscale = num_classes, image_size, list(multiscale or [])
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

        w, pool = width, nn.MaxPool2d
        stages = [conv_block(3, w), pool(2), conv_block(w, 2 * w), pool(2), bottleneck_stage(2 * w, 4 * w), pool(2),
                  bottleneck_stage(4 * w, 8 * w), pool(2), bottleneck_stage(8 * w, 16 * w)]
        half = 16 * w if stride == 32 else 8 * w  # channels at stride / 2, the passthrough's source
        self.to_half = nn.Sequential(*(stages if stride == 32 else stages[:-2]))
        self.to_out = nn.Sequential(pool(2), bottleneck_stage(half, 16 * w))
        self.passthrough = conv_block(half, 2 * w, 1)  # then space-to-depth: 2w -> 8w channels at the output stride
        self.fuse = conv_block(24 * w, 16 * w)
        self.head = nn.Conv2d(16 * w, len(self.anchors) * (5 + num_classes), 1)
        nn.init.normal_(self.head.weight, std=0.01)  # small start outputs, as in RetinaNet: stable first steps
        nn.init.zeros_(self.head.bias)
        with torch.no_grad():
            self.head.bias.view(len(self.anchors), -1)[:, 4] = OBJ_PRIOR_BIAS

    def set_anchors(self, anchors) -> None:
        """Copy new (w, h) anchors (pixels at image_size) into the buffer; their count must not change."""
        anchors = torch.as_tensor(anchors, dtype=self.anchors.dtype, device=self.anchors.device)
        if anchors.shape != self.anchors.shape:
            raise ValueError(f"anchors must have shape {tuple(self.anchors.shape)}, got {tuple(anchors.shape)}")
        self.anchors.copy_(anchors)

    @torch.jit.unused  # export scripts `dense_detections`, not this list-of-images interface
    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        """Losses (train mode, targets required) or per-image detections (eval mode)."""
        if self.training and targets is None:
            raise ValueError("targets are required in train mode")
        size = self.image_size
        if self.training and self.multiscale:
            size = self.multiscale[int(torch.randint(len(self.multiscale), ()))]
        batch, scales = self._preprocess(images, size)
        out = self._raw_output(batch)
        if self.training:
            return self._loss(out, self._scaled_targets(targets, scales, size), size)
        return self._postprocess(out, scales, [img.shape[-2:] for img in images])

    def _preprocess(self, images: list[Tensor], size: int) -> tuple[Tensor, Tensor]:
        """Resize each image to size x size, normalise and stack; also return each image's (sx, sy) scale."""
        resized = [F.interpolate(img[None], (size, size), mode="bilinear", antialias=True)[0] for img in images]
        batch = (torch.stack(resized) - self.image_mean) / self.image_std
        scales = torch.tensor([[size / img.shape[-1], size / img.shape[-2]] for img in images], device=batch.device)
        return batch, scales

    def _raw_output(self, batch: Tensor) -> Tensor:
        """Head output arranged as (B, H, W, A, 5 + C): tx, ty, tw, th, objectness, class logits."""
        fine = self.to_half(batch)
        x = torch.cat([F.pixel_unshuffle(self.passthrough(fine), 2), self.to_out(fine)], 1)
        out = self.head(self.fuse(x))
        b, _, h, w = out.shape
        return out.view(b, len(self.anchors), 5 + self.num_classes, h, w).permute(0, 3, 4, 1, 2)

    @staticmethod
    def _scaled_targets(targets: list[dict], scales: Tensor, size: int) -> list[tuple[Tensor, Tensor]]:
        """Targets as (boxes, labels) at the network input, clipped to it, without degenerate boxes."""
        scaled = []
        for target, scale in zip(targets, scales):
            boxes = clip_boxes_to_image(target["boxes"].reshape(-1, 4).float() * scale.repeat(2), (size, size))
            keep = remove_small_boxes(boxes, MIN_BOX_SIDE)
            scaled.append((boxes[keep], target["labels"].reshape(-1).long()[keep]))
        return scaled

    def _loss(self, out: Tensor, targets: list[tuple[Tensor, Tensor]], size: int) -> dict[str, Tensor]:
        """YOLOv2 loss, each term summed over the batch and divided by the batch size."""
        batch_size = out.shape[0]
        anchors = self.anchors * (size / self.image_size)
        stride = size / out.shape[2]
        flat = out.reshape(-1, out.shape[-1])
        slots, txy, twh, scale, labels = self._assign(targets, anchors, stride, out.shape[1:4], size)
        obj_weight = (~self._ignored(out, [boxes for boxes, _ in targets], anchors, stride)).float()
        obj_weight[slots] = 1.0
        obj_target = torch.zeros_like(flat[:, 4])
        obj_target[slots] = 1.0
        pos = flat[slots]
        return {
            "loss_xy": (scale[:, None] * (pos[:, :2].sigmoid() - txy) ** 2).sum() / batch_size,
            "loss_wh": (scale[:, None] * (pos[:, 2:4] - twh) ** 2).sum() / batch_size,
            "loss_obj": F.binary_cross_entropy_with_logits(flat[:, 4], obj_target, obj_weight, reduction="sum")
            / batch_size,
            "loss_cls": F.cross_entropy(pos[:, 5:], labels, reduction="sum") / batch_size,
        }

    @staticmethod
    def _assign(targets, anchors: Tensor, stride: float, grid: tuple[int, int, int], size: int) -> tuple[Tensor, ...]:
        """Give each box the cell holding its centre and the anchor of best shape IoU.

        Returns the flat (image, y, x, anchor) slot of each kept box with its sigmoid(tx, ty) and (tw, th) targets,
        coordinate loss scale (2 - w * h / size**2) and label; when boxes share a slot the last one wins.
        """
        h, w, num_anchors = grid
        boxes = torch.cat([b for b, _ in targets])
        labels = torch.cat([lab for _, lab in targets])
        image = torch.cat([torch.full((len(b),), i, device=boxes.device) for i, (b, _) in enumerate(targets)])
        wh = boxes[:, 2:] - boxes[:, :2]
        best = wh_iou(wh, anchors).argmax(1)
        cells, txy, twh = encode_boxes(boxes, anchors[best], stride, (h, w))
        slots = ((image * h + cells[:, 1]) * w + cells[:, 0]) * num_anchors + best
        order = torch.arange(len(slots), device=boxes.device)
        last = torch.full((len(targets) * h * w * num_anchors,), -1, device=boxes.device)
        last = last.scatter_reduce(0, slots, order, reduce="amax")
        keep = last[slots] == order
        scale = 2 - wh.prod(1) / size**2
        return slots[keep], txy[keep], twh[keep], scale[keep], labels[keep]

    @staticmethod
    @torch.no_grad()
    def _ignored(out: Tensor, boxes: list[Tensor], anchors: Tensor, stride: float) -> Tensor:
        """Flat mask of predictions whose decoded box has IoU > IGNORE_IOU with a ground truth of their image."""
        pred = decode_boxes(out[..., :4], anchors, stride).flatten(1, 3)
        ignored = torch.zeros(pred.shape[:2], dtype=torch.bool, device=pred.device)
        for i, gt in enumerate(boxes):
            if len(gt):
                ignored[i] = box_iou(pred[i], gt).amax(1) > IGNORE_IOU
        return ignored.flatten()

    def _postprocess(self, out: Tensor, scales: Tensor, image_hws: list) -> list[dict[str, Tensor]]:
        """Decode, map back to each original image and filter."""
        boxes, scores = self._decode(out)
        return [self.select(b / s.repeat(2), sc, hw) for b, sc, s, hw in zip(boxes, scores, scales, image_hws)]

    def _decode(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """(B, P, 4) xyxy boxes at the network input and (B, P, C) class confidences of every prediction."""
        boxes = decode_boxes(out[..., :4], self.anchors, self.image_size / out.shape[2]).flatten(1, 3)
        scores = (out[..., 4:5].sigmoid() * out[..., 5:].softmax(-1)).flatten(1, 3)
        return boxes, scores

    def dense_detections(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Every prediction of a batch of same-size [0, 1] images before thresholding and NMS: (N, P, 4) boxes in
        the images' pixels and (N, P, C) confidences. The fixed-shape part of inference, which exports to any
        format; `select` finishes it."""
        size = self.image_size
        height, width = images.shape[-2], images.shape[-1]
        batch = F.interpolate(images, (size, size), mode="bilinear", antialias=True)
        boxes, scores = self._decode(self._raw_output((batch - self.image_mean) / self.image_std))
        sx, sy = width / size, height / size
        boxes = torch.stack([boxes[..., 0] * sx, boxes[..., 1] * sy, boxes[..., 2] * sx, boxes[..., 3] * sy], -1)
        return boxes, scores

    def select(self, boxes: Tensor, scores: Tensor, image_hw) -> dict[str, Tensor]:
        return select_detections(boxes, scores, image_hw, self.score_thresh, self.nms_thresh,
                                 self.detections_per_img)


def select_detections(boxes: Tensor, scores: Tensor, image_hw, score_thresh: float, nms_thresh: float,
                      detections_per_img: int) -> dict[str, Tensor]:
    """One image's detections from its (P, 4) boxes and (P, C) confidences: per-class score threshold, clipping,
    per-class NMS and top-k."""
    box_idx, labels = (scores > score_thresh).nonzero(as_tuple=True)
    boxes, scores = clip_boxes_to_image(boxes[box_idx], tuple(image_hw)), scores[box_idx, labels]
    keep = remove_small_boxes(boxes, MIN_BOX_SIDE)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


@register_model("yolo", task="detection", min_size=64,
                description="YOLOv2-style single-stage detector (Redmon & Farhadi 2017), Darknet-like backbone")
def yolo(num_classes: int, in_channels: int = 3, weights: str | None = None, *, width: int = 32,
         anchors: list[list[float]] | None = None, num_anchors: int = 5, image_size: int = 128,
         multiscale: list[int] | None = None, stride: int = 32, score_thresh: float = 0.01, nms_thresh: float = 0.45,
         detections_per_img: int = 100) -> YOLOv2:
    """`anchors` in pixels at `image_size` (the task adapter passes k-means clusters of the training boxes)."""
    reject_weights_name("yolo", weights)
    if in_channels != 3:
        raise CvtoolError(f"yolo takes RGB images, got {in_channels} channel(s)", where="dataset.channels",
                          fix="use an RGB dataset")
    model = YOLOv2(num_classes, width=width, anchors=anchors, num_anchors=num_anchors, image_size=image_size,
                   multiscale=multiscale, stride=stride, score_thresh=score_thresh, nms_thresh=nms_thresh,
                   detections_per_img=detections_per_img)
    model.label_offset = 0
    return model
