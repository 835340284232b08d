"""OverFeat (Sermanet et al. 2014) in miniature: a fully convolutional classifier applied densely at several scales,
a box regressor per location and the paper's greedy merging of the predicted boxes.

The classifier's fully connected layers are convolutions: a conv trunk of output stride STRIDE, a "window" conv whose
k x k kernel spans the training window (k * STRIDE pixels of the scaled image), then 1 x 1 convs. Output location
(row i, column j) of a scale thus classifies the square window of side k * STRIDE centred on ((j + 1/2) STRIDE,
(i + 1/2) STRIDE) of that scale's input (its receptive field is larger: the context around the window) and regresses
the object's box edges relative to that window. Each image is resized (no letterbox) to `image_size` * scale squared
for every scale, so small objects are seen at the large scales, large ones at the small scales.

Labels are 0-based with the background as the extra last class (`label_offset = 0`); boxes are xyxy pixels of each
original image, as torchvision's detectors return them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou, clip_boxes_to_image, remove_small_boxes

from cvtool.errors import CvtoolError
from cvtool.models.registry import register_model
from cvtool.models.weights import reject_weights_name
from cvtool.models.yolo import MIN_BOX_SIDE, conv_block

STRIDE = 8  # the trunk's output stride: the spacing of the windows at each scale
SIZE_BAND = (0.5, 1.2)  # a location is positive for objects whose longer side is this fraction of its window
IGNORE_STRETCH = 1.15  # sizes up to this factor outside SIZE_BAND are neither object nor background
CENTRE_FRACTION = 0.5  # positive locations have their window centre in the central half of the object's box
IGNORE = -1  # the label of locations left out of the classification loss
BACKGROUND_PRIOR_BIAS = 4.6  # the background logit starts ~100x above the others: a stable first step
BOX_BETA = 1 / 9  # smooth-L1 switch point, in window units (torchvision's R-CNN value)
MERGE_SCORES = ("sum", "max")
DEFAULT_SCALES = (0.5, 0.75, 1.0)  # with 24 px windows: objects of 12-58 px at image_size 128 (the shapes devkit's)


def window_centres(grid_hw: tuple[int, int], stride: int = STRIDE) -> Tensor:
    """(H * W, 2) xy centres of the windows of an H x W output map, row-major, in the scaled input's pixels."""
    rows, cols = torch.meshgrid(torch.arange(grid_hw[0]), torch.arange(grid_hw[1]), indexing="ij")
    return (torch.stack([cols, rows], -1).reshape(-1, 2).float() + 0.5) * stride


def window_boxes(centres: Tensor, window: float) -> Tensor:
    """(P, 4) xyxy squares of side `window` around (P, 2) centres."""
    return torch.cat([centres - window / 2, centres + window / 2], 1)


def encode_boxes(boxes: Tensor, centres: Tensor, window: float) -> Tensor:
    """The regression targets: (P, 4) box edges x1, y1, x2, y2 minus their window's edges, in window units (0: the
    window itself)."""
    return (boxes - window_boxes(centres, window)) / window


def decode_boxes(deltas: Tensor, centres: Tensor, window: float) -> Tensor:
    """Inverse of encode_boxes: (..., P, 4) edge offsets in window units -> xyxy pixels of the scaled input."""
    return deltas * window + window_boxes(centres, window)


def assign_locations(boxes: Tensor, labels: Tensor, centres: Tensor, window: float, forced: Tensor,
                     background: int, stride: int = STRIDE) -> tuple[Tensor, Tensor]:
    """Labels of one image's windows at one scale from its (G, 4) gt boxes (pixels of that scale's input).

    A window is positive for a gt when the gt's size matches the scale (longer side in SIZE_BAND times the window,
    or `forced`: the gt fits no scale's band and this is its closest scale) and the window's centre lies in the
    gt's central CENTRE_FRACTION or within stride / 2 of the gt's centre (so the cell holding the centre always
    is); a window positive for several takes the one whose centre is nearest (relative to its size). Windows
    centred inside a gt whose size is within IGNORE_STRETCH of the band are ignored (IGNORE); all others are
    `background`. Returns the (P,) labels and each window's gt index (-1 where not positive).
    """
    num = len(centres)
    if len(boxes) == 0:
        return torch.full((num,), background, dtype=torch.long), torch.full((num,), -1, dtype=torch.long)
    wh = boxes[:, 2:] - boxes[:, :2]
    ratio = wh.amax(1) / window
    in_band = ((ratio >= SIZE_BAND[0]) & (ratio <= SIZE_BAND[1])) | forced
    near = ((ratio >= SIZE_BAND[0] / IGNORE_STRETCH) & (ratio <= SIZE_BAND[1] * IGNORE_STRETCH)) | forced
    offset = (centres[:, None] - (boxes[:, :2] + boxes[:, 2:])[None] / 2).abs()  # (P, G, 2)
    reach = torch.clamp(CENTRE_FRACTION * wh / 2, min=stride / 2)
    positive = (offset <= reach).all(-1) & in_band
    inside = ((centres[:, None] >= boxes[None, :, :2]) & (centres[:, None] < boxes[None, :, 2:])).all(-1)
    nearest = (offset / wh.clamp(min=1)).square().sum(-1).masked_fill(~positive, math.inf).argmin(1)
    is_positive = positive.any(1)
    assigned = torch.full((num,), background, dtype=torch.long)
    assigned[(inside & near).any(1)] = IGNORE
    assigned[is_positive] = labels[nearest[is_positive]]
    return assigned, torch.where(is_positive, nearest, -1)


def _mean_side(boxes: np.ndarray) -> np.ndarray:
    """(n,) sqrt of the area of (n, 4) xyxy boxes."""
    return np.sqrt(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None).prod(1))


def match_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The merge's (n, m) match score of xyxy boxes: distance between the centres over the pair's mean side
    (sqrt of area) plus 1 - IoU. The paper sums the centre distance and an intersection term; normalising both makes
    one `merge_threshold` fit every object size. 0 for identical boxes, 2 for disjoint neighbours of one size."""
    distance = np.linalg.norm((a[:, None, :2] + a[:, None, 2:] - b[None, :, :2] - b[None, :, 2:]) / 2, axis=-1)
    mean_side = np.maximum((_mean_side(a)[:, None] + _mean_side(b)[None]) / 2, 1e-6)
    iou = box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    return distance / mean_side + 1 - iou


def greedy_merge(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """OverFeat's greedy merge of one class's (n, 4) boxes: repeatedly merge the pair of smallest match score while
    it is at most `threshold`, a merged box being the mean of all the boxes merged into it. Returns each box's group
    (n,) in 0..m-1, numbered in order of first member (`merge_groups` forms the boxes)."""
    boxes = boxes.astype(np.float64)
    count = np.ones(len(boxes))
    group = np.arange(len(boxes))
    match = match_scores(boxes, boxes)
    np.fill_diagonal(match, np.inf)
    for _ in range(len(boxes) - 1):
        i, j = np.unravel_index(np.argmin(match), match.shape)
        if match[i, j] > threshold:
            break
        i, j = min(i, j), max(i, j)
        boxes[i] = (boxes[i] * count[i] + boxes[j] * count[j]) / (count[i] + count[j])
        count[i], count[j] = count[i] + count[j], 0
        group[group == j] = i
        row = match_scores(boxes[i:i + 1], boxes)[0]
        row[count == 0] = np.inf
        row[i] = np.inf
        match[i], match[:, i], match[j], match[:, j] = row, row, np.inf, np.inf
    return np.unique(group, return_inverse=True)[1].reshape(-1)


def merge_groups(boxes: Tensor, scores: Tensor, groups: Tensor, reduce: str = "sum") -> tuple[Tensor, Tensor]:
    """(m, 4) mean box and (m,) summed (`"sum"`: the paper's cumulative confidence) or highest (`"max"`) score of
    each of the m groups of (n,) `groups`; differentiable in the scores and boxes."""
    num = int(groups.max()) + 1 if len(groups) else 0
    count = torch.zeros(num, device=boxes.device).index_add_(0, groups, torch.ones_like(scores))
    merged = boxes.new_zeros(num, 4).index_add(0, groups, boxes) / count[:, None]
    if reduce == "sum":
        return merged, scores.new_zeros(num).index_add(0, groups, scores)
    return merged, scores.new_zeros(num).scatter_reduce(0, groups, scores, reduce="amax", include_self=False)


def merge_detections(boxes: Tensor, scores: Tensor, image_hw, *, score_thresh: float, merge_threshold: float,
                     merge_score: str = "sum", candidates_per_class: int = 100,
                     detections_per_img: int = 100) -> dict[str, Tensor]:
    """One image's detections from its dense (P, 4) boxes and (P, C) confidences: keep the locations whose best
    class passes `score_thresh` (the `candidates_per_class` best per class), clip, greedy-merge per class, keep the
    `detections_per_img` best."""
    best, labels = scores.max(1)
    keep = (best >= score_thresh).nonzero()[:, 0]
    boxes, best, labels = clip_boxes_to_image(boxes[keep].float(), tuple(image_hw)), best[keep].float(), labels[keep]
    keep = remove_small_boxes(boxes, MIN_BOX_SIDE)
    boxes, best, labels = boxes[keep], best[keep], labels[keep]
    out_boxes, out_scores, out_labels = [boxes.new_zeros(0, 4)], [best.new_zeros(0)], [labels.new_zeros(0)]
    for label in labels.unique().tolist():
        index = (labels == label).nonzero()[:, 0]
        index = index[best[index].argsort(descending=True, stable=True)[:candidates_per_class]]
        groups = greedy_merge(boxes[index].detach().cpu().numpy(), merge_threshold)
        merged, merged_scores = merge_groups(boxes[index], best[index],
                                             torch.as_tensor(groups, device=boxes.device), merge_score)
        out_boxes.append(merged)
        out_scores.append(merged_scores)
        out_labels.append(labels.new_full((len(merged),), label))
    out_scores = torch.cat(out_scores)
    order = out_scores.argsort(descending=True, stable=True)[:detections_per_img]
    return {"boxes": torch.cat(out_boxes)[order], "scores": out_scores[order], "labels": torch.cat(out_labels)[order]}


class OverFeat(nn.Module):
    """The dense multi-scale classifier + box regressor (see the module docstring).

    Training (`model(images, targets)`) runs one scale per call, drawn at random from `scales`, and returns
    `loss_classifier` (cross-entropy over the classes + background on the positive windows and the
    `neg_pos_ratio` x as many hardest background windows, per image) and `loss_box_reg` (smooth-L1 on the positive
    windows' box edges, from the regressor of their class unless `class_agnostic_boxes`), both divided by the number
    of positive windows. The paper trains the regressor's layers separately on frozen features; here the two heads
    share the window conv and are trained jointly.
    """

    def __init__(self, num_classes: int, *, width: int = 12, hidden: int = 96, window: int = 3,
                 scales: list[float] | None = None, image_size: int = 128, class_agnostic_boxes: bool = False,
                 neg_pos_ratio: float = 3.0, score_thresh: float = 0.03, merge_threshold: float = 1.0,
                 merge_score: str = "sum", candidates_per_class: int = 100, detections_per_img: int = 100,
                 image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225)):
        super().__init__()
        scales = list(scales or DEFAULT_SCALES)
        check_options(window, scales, merge_score)
        self.num_classes, self.image_size, self.window = num_classes, image_size, float(window * STRIDE)
        self.sizes = [max(1, round(image_size * s / STRIDE)) * STRIDE for s in scales]
        self.class_agnostic_boxes, self.neg_pos_ratio = class_agnostic_boxes, neg_pos_ratio
        self.score_thresh, self.merge_threshold, self.merge_score = score_thresh, merge_threshold, merge_score
        self.candidates_per_class, self.detections_per_img = candidates_per_class, detections_per_img
        self.register_buffer("image_mean", torch.tensor(image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(-1, 1, 1), persistent=False)

        w, pool = width, nn.MaxPool2d
        self.trunk = nn.Sequential(conv_block(3, w), pool(2), conv_block(w, 2 * w), pool(2), conv_block(2 * w, 4 * w),
                                   conv_block(4 * w, 4 * w), pool(2), conv_block(4 * w, 8 * w))
        self.head = nn.Sequential(conv_block(8 * w, hidden, window), conv_block(hidden, hidden, 1))  # FC6, FC7
        self.classifier = nn.Conv2d(hidden, num_classes + 1, 1)
        self.box_regressor = nn.Conv2d(hidden, 4 * (1 if class_agnostic_boxes else num_classes), 1)
        for layer in (self.classifier, self.box_regressor):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        with torch.no_grad():
            self.classifier.bias[num_classes] = BACKGROUND_PRIOR_BIAS
        self.explained_layer = f"trunk.{len(self.trunk) - 1}"
        self.label_offset = 0

    @torch.jit.unused  # export traces `dense_detections`, not this list-of-images interface
    def forward(self, images: list[Tensor], targets: list[dict] | None = None):
        """Losses (train mode, targets required) or per-image detections (eval mode)."""
        if self.training:
            if targets is None:
                raise ValueError("targets are required in train mode")
            scale = int(torch.randint(len(self.sizes), ()))
            return self._loss(images, targets, scale)
        if len({tuple(image.shape) for image in images}) == 1:
            dense = zip(*self.dense_detections(torch.stack(list(images))))
        else:
            dense = (tuple(out[0] for out in self.dense_detections(image[None])) for image in images)
        return [self.select(boxes, scores, image.shape[-2:]) for image, (boxes, scores) in zip(images, dense)]

    def _raw_output(self, images: Tensor, size: int) -> tuple[Tensor, Tensor, tuple[int, int]]:
        """[0, 1] images resized to size x size -> fp32 (N, P, C + 1) class logits, (N, P, 4 or 4C) box edges and
        the (H, W) output map (P = H * W locations, row-major)."""
        x = F.interpolate(images, (size, size), mode="bilinear", antialias=True)
        features = self.head(self.trunk((x - self.image_mean) / self.image_std))
        logits, deltas = (layer(features).float().flatten(2).transpose(1, 2)
                          for layer in (self.classifier, self.box_regressor))
        return logits, deltas, tuple(features.shape[-2:])

    def dense_detections(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Every window of every scale for a batch of same-size [0, 1] images, before thresholding and merging:
        (N, P, 4) boxes in the images' pixels (from the regressor of each window's best class) and (N, P, C) class
        probabilities (softmax over classes + background, background dropped). The fixed-shape part of inference,
        which exports; `select` finishes it."""
        height, width = images.shape[-2:]
        all_boxes, all_scores = [], []
        for size in self.sizes:
            logits, deltas, grid = self._raw_output(images, size)
            scores = logits.softmax(-1)[..., :self.num_classes]
            if not self.class_agnostic_boxes:
                best = scores.argmax(-1)[..., None, None].expand(-1, -1, 1, 4)
                deltas = deltas.unflatten(-1, (self.num_classes, 4)).gather(2, best)[:, :, 0]
            boxes = decode_boxes(deltas, window_centres(grid).to(deltas.device), self.window)
            all_boxes.append(boxes * torch.tensor([width / size, height / size], device=boxes.device).repeat(2))
            all_scores.append(scores)
        return torch.cat(all_boxes, 1), torch.cat(all_scores, 1)

    def select(self, boxes: Tensor, scores: Tensor, image_hw) -> dict[str, Tensor]:
        return merge_detections(boxes, scores, image_hw, **self.merge_settings())

    def merge_settings(self) -> dict:
        """What `merge_detections` needs besides the dense outputs (for an exported model's sidecar)."""
        return {"score_thresh": self.score_thresh, "merge_threshold": self.merge_threshold,
                "merge_score": self.merge_score, "candidates_per_class": self.candidates_per_class,
                "detections_per_img": self.detections_per_img}

    def _loss(self, images: list[Tensor], targets: list[dict], scale: int) -> dict[str, Tensor]:
        size = self.sizes[scale]
        batch = torch.cat([F.interpolate(image[None], (size, size), mode="bilinear", antialias=True)
                           for image in images])
        logits, deltas, grid = self._raw_output(batch, size)
        centres = window_centres(grid)
        labels, box_targets = zip(*(self._location_targets(image, target, centres, scale)
                                    for image, target in zip(images, targets)))
        labels, box_targets = torch.stack(labels).to(logits.device), torch.stack(box_targets).to(logits.device)
        positive = (labels >= 0) & (labels < self.num_classes)
        num_positive = positive.sum().clamp(min=1)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.clamp(min=0).flatten(), reduction="none")
        loss = loss.view_as(labels)
        chosen = positive | self._hard_negatives(loss.detach(), labels == self.num_classes, positive.sum(1))
        pred = deltas[positive]
        if not self.class_agnostic_boxes:
            pred = pred.unflatten(-1, (self.num_classes, 4))[torch.arange(len(pred)), labels[positive]]
        box_loss = F.smooth_l1_loss(pred, box_targets[positive], beta=BOX_BETA, reduction="sum")
        return {"loss_classifier": loss[chosen].sum() / num_positive, "loss_box_reg": box_loss / num_positive}

    def _hard_negatives(self, loss: Tensor, negative: Tensor, num_positive: Tensor) -> Tensor:
        """Per image, the `neg_pos_ratio` x (its positives, at least 1) background windows of highest loss."""
        rank = loss.masked_fill(~negative, -math.inf).argsort(1, descending=True).argsort(1)
        return negative & (rank < (self.neg_pos_ratio * num_positive.clamp(min=1))[:, None])

    def _location_targets(self, image: Tensor, target: dict, centres: Tensor, scale: int) -> tuple[Tensor, Tensor]:
        """(P,) labels and (P, 4) box targets of one image's windows at scale index `scale` (see assign_locations)."""
        height, width = image.shape[-2:]
        boxes = target["boxes"].reshape(-1, 4).float().cpu()
        keep = remove_small_boxes(boxes, MIN_BOX_SIDE)
        boxes, labels = boxes[keep], target["labels"].reshape(-1).long().cpu()[keep]
        sides = torch.tensor([[size / width, size / height] for size in self.sizes]).repeat(1, 2)  # (S, 4)
        at_scales = boxes[None] * sides[:, None]  # (S, G, 4)
        forced = self._forced_scale(at_scales) == scale
        assigned, match = assign_locations(at_scales[scale], labels, centres, self.window, forced, self.num_classes)
        box_targets = torch.zeros(len(centres), 4)
        positive = match >= 0
        box_targets[positive] = encode_boxes(at_scales[scale][match[positive]], centres[positive], self.window)
        return assigned, box_targets

    def _forced_scale(self, at_scales: Tensor) -> Tensor:
        """(G,) the scale index of each gt that fits no scale's SIZE_BAND: the one closest to the band in log size;
        -1 for the others."""
        ratio = (at_scales[..., 2:] - at_scales[..., :2]).amax(-1) / self.window  # (S, G)
        fits = ((ratio >= SIZE_BAND[0]) & (ratio <= SIZE_BAND[1])).any(0)
        closest = (ratio.log() - math.log(math.sqrt(SIZE_BAND[0] * SIZE_BAND[1]))).abs().argmin(0)
        return torch.where(fits, -1, closest)


def check_options(window: int, scales: list[float], merge_score: str) -> None:
    """Config errors a user can make, as one line naming the key."""
    if window < 1 or window % 2 == 0:
        raise CvtoolError(f"the window conv needs an odd kernel size, got {window}", where="model.window",
                          fix="use 3, 5 or 7 (the window is window * 8 px of each scaled image)")
    if not scales or any(s <= 0 for s in scales):
        raise CvtoolError(f"scales must be positive factors of image_size, got {scales}", where="model.scales",
                          fix="e.g. model.scales=[1.0,1.5,2.0]")
    if merge_score not in MERGE_SCORES:
        raise CvtoolError(f"unknown merge_score {merge_score!r}", where="model.merge_score",
                          fix=f"use one of {', '.join(MERGE_SCORES)}")


@register_model("overfeat", task="detection", min_size=32,
                description="OverFeat (Sermanet et al. 2014): a fully convolutional classifier applied densely at "
                            "several scales, per-location box regression, greedy box merging")
def overfeat(num_classes: int, in_channels: int = 3, weights: str | None = None, *, width: int = 12,
             hidden: int = 96, window: int = 3, scales: list[float] | None = None, image_size: int = 128,
             class_agnostic_boxes: bool = False, neg_pos_ratio: float = 3.0, score_thresh: float = 0.03,
             merge_threshold: float = 1.0, merge_score: str = "sum", candidates_per_class: int = 100,
             detections_per_img: int = 100) -> OverFeat:
    """`window`: the window conv's kernel in trunk cells (the window is window * 8 px of each scaled image);
    `scales`: factors of `image_size` (default DEFAULT_SCALES); `width`: the first conv's channels (the trunk
    widens to 8 x); `hidden`: channels of the window conv and the 1 x 1 conv after it."""
    reject_weights_name("overfeat", weights)
    if in_channels != 3:
        raise CvtoolError(f"overfeat takes RGB images, got {in_channels} channel(s)", where="dataset.channels",
                          fix="use an RGB dataset")
    return OverFeat(num_classes, width=width, hidden=hidden, window=window, scales=scales, image_size=image_size,
                    class_agnostic_boxes=class_agnostic_boxes, neg_pos_ratio=neg_pos_ratio, score_thresh=score_thresh,
                    merge_threshold=merge_threshold, merge_score=merge_score,
                    candidates_per_class=candidates_per_class, detections_per_img=detections_per_img)
