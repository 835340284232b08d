"""R-CNN (Girshick et al. 2014): each region proposal warped (with context padding) to a fixed-size crop and passed
through a CNN; the CNN is fine-tuned as a (classes + background) classifier, then per-class linear SVMs with
hard-negative mining and ridge box regressors are fitted on its cached penultimate-layer features.

Interface as torchvision's detectors, plus the proposals: train mode `model(images, targets, proposals)` -> losses,
eval mode `model(images, proposals=...)` -> per-image {"boxes", "scores", "labels"} (labels 1..C: background is 0,
`label_offset = 1`). `model.fit_classifiers(batches)` is the paper's second stage (the trainer calls it after the
last epoch); the fitted weights are buffers, so state dicts and checkpoints carry them.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align

from cvtool.errors import CvtoolError
from cvtool.models.embedding_net import replace_last_linear
from cvtool.models.registry import create_model, list_models, model_info, register_model
from cvtool.models.weights import reject_weights_name

log = logging.getLogger("cvtool.rcnn")

PAPER_PADDING, PAPER_CROP = 16, 227  # context padding: 16 px of context around the box in a 227 px warped crop
FG_IOU = 0.5  # fine-tuning: a region is foreground at IoU >= 0.5 with a ground truth, else background
SVM_NEG_IOU = 0.3  # SVM negatives: IoU < 0.3 with every ground truth of the class
BBOX_IOU = 0.6  # box regression: regions with IoU >= 0.6 with their best ground truth
HARD_MARGIN = -1.0  # hard negatives: score above -1, i.e. inside the hinge margin
FEATURE_NORM = 20.0  # features scaled to this mean L2 norm before the SVM / ridge fits (the paper's setting)
PAPER_FEATURES, PAPER_RIDGE_ALPHA = 9216, 1000.0  # ridge lambda 1000 on pool5 features (6 * 6 * 256)
LOG_WH_CLIP = math.log(1000.0 / 16)  # cap on log(dw), log(dh) before exp (as torchvision's box coder)
MIN_SIDE = 1.0  # proposals thinner than 1 px are dropped
UNFITTED_BIAS = -1e4  # SVM bias of a class without positives or negatives: it never scores


def context_boxes(boxes: Tensor, crop_size: int, padding: float) -> Tensor:
    """(K, 4) XYXY boxes enlarged about their centres so that, warped to crop_size px, each box fills the central
    crop_size - 2 * padding px and `padding` px of its surroundings show on every side."""
    scale = crop_size / (crop_size - 2 * padding)
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (scale / 2)
    return torch.cat([centre - half, centre + half], 1)


def warp_regions(image: Tensor, boxes: Tensor, crop_size: int, padding: float) -> Tensor:
    """(K, C, crop_size, crop_size) crops of the normalised (C, H, W) `image`: R-CNN's anisotropic warp of each
    (K, 4) XYXY px box with context padding, by RoIAlign (pixel i spans [i, i + 1); bins averaged when shrinking).
    Context beyond the image border reads as 0, the mean of the normalised image (the paper's mean padding)."""
    rois = context_boxes(boxes.float(), crop_size, padding)
    return roi_align(image[None].float(), [rois], crop_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def encode_deltas(proposals: Tensor, gt: Tensor) -> Tensor:
    """R-CNN's box regression targets of (N, 4) XYXY `gt` for its (N, 4) `proposals`: (dx, dy, log dw, log dh) =
    ((gx - px) / pw, (gy - py) / ph, log(gw / pw), log(gh / ph)) with (x, y) the centre and (w, h) the size."""
    pw, ph = proposals[:, 2] - proposals[:, 0], proposals[:, 3] - proposals[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    dx = (gt[:, 0] + gw / 2 - proposals[:, 0] - pw / 2) / pw
    dy = (gt[:, 1] + gh / 2 - proposals[:, 1] - ph / 2) / ph
    return torch.stack([dx, dy, torch.log(gw / pw), torch.log(gh / ph)], 1)


def decode_deltas(proposals: Tensor, deltas: Tensor) -> Tensor:
    """Inverse of encode_deltas: (N, 4) proposals and (N, ..., 4) deltas -> (N, ..., 4) XYXY boxes."""
    shape = (-1,) + (1,) * (deltas.dim() - 2)
    pw = (proposals[:, 2] - proposals[:, 0]).view(shape)
    ph = (proposals[:, 3] - proposals[:, 1]).view(shape)
    px, py = proposals[:, 0].view(shape) + pw / 2, proposals[:, 1].view(shape) + ph / 2
    x, y = px + deltas[..., 0] * pw, py + deltas[..., 1] * ph
    w = pw * deltas[..., 2].clamp(max=LOG_WH_CLIP).exp()
    h = ph * deltas[..., 3].clamp(max=LOG_WH_CLIP).exp()
    return torch.stack([x - w / 2, y - h / 2, x + w / 2, y + h / 2], -1)


def usable_proposals(proposals: Tensor, image_hw: tuple[int, int], limit: int | None = None) -> Tensor:
    """The first `limit` proposals, clipped to the image, without those thinner than MIN_SIDE px."""
    boxes = clip_boxes_to_image(proposals[:limit].float().reshape(-1, 4), image_hw)
    return boxes[remove_small_boxes(boxes, MIN_SIDE)]


@dataclass
class RegionCache:
    """CNN features of every region (ground truths first, then proposals) of the fitting images, with what the
    SVM and ridge fits need: per-class max IoU (N, C), each region's best ground truth's IoU, class and deltas."""

    features: np.ndarray  # (N, D) float32
    gt_label: np.ndarray  # (N,) class index 0..C-1 of a ground-truth region, -1 for a proposal
    class_iou: np.ndarray  # (N, C) max IoU with the ground truths of each class (0 without any)
    best_iou: np.ndarray  # (N,)
    best_label: np.ndarray  # (N,) class index of the best-overlapping ground truth (-1: none)
    deltas: np.ndarray  # (N, 4) regression targets towards that ground truth


class RCNN(nn.Module):
    """`cnn` (a classifier minus its last Linear, giving D features) + `classifier` (Linear(D, C + 1)) applied to
    warped regions; `svm_*` and `bbox_*` buffers hold the fitted SVMs and box regressors (valid when `fitted`)."""

    uses_proposals = True
    label_offset = 1

    def __init__(self, cnn: nn.Module, classifier: nn.Linear, num_classes: int, *, crop_size: int, padding: float,
                 regions_per_image: int, fg_fraction: float, test_proposals: int, fit_proposals: int,
                 chunk_size: int, svm: Mapping[str, float], ridge_alpha: float | None, score_thresh: float,
                 nms_thresh: float, detections_per_img: int, image_mean: tuple[float, ...],
                 image_std: tuple[float, ...]):
        super().__init__()
        self.cnn, self.classifier, self.num_classes = cnn, classifier, num_classes
        self.crop_size, self.padding = crop_size, padding
        self.regions_per_image, self.fg_fraction = regions_per_image, fg_fraction
        self.test_proposals, self.fit_proposals, self.chunk_size = test_proposals, fit_proposals, chunk_size
        self.svm_options, self.ridge_alpha = dict(svm), ridge_alpha
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.register_buffer("image_mean", torch.tensor(image_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(-1, 1, 1), persistent=False)
        dim = classifier.in_features
        self.register_buffer("svm_weight", torch.zeros(num_classes, dim))
        self.register_buffer("svm_bias", torch.full((num_classes,), UNFITTED_BIAS))
        self.register_buffer("bbox_weight", torch.zeros(num_classes, 4, dim))
        self.register_buffer("bbox_bias", torch.zeros(num_classes, 4))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.jit.unused
    def forward(self, images: list[Tensor], targets: list[dict] | None = None,
                proposals: list[Tensor] | None = None):
        """Losses (train mode: targets and proposals) or per-image detections (eval mode: proposals)."""
        if proposals is None:
            raise CvtoolError("model rcnn classifies region proposals, but none were given", where="model.proposals",
                              fix="set model.proposals to a method (selective_search, edge, kmeans) or a proposal file")
        if len(proposals) != len(images):
            raise ValueError(f"got proposals for {len(proposals)} images, but {len(images)} images")
        if self.training:
            if targets is None:
                raise ValueError("targets are required in train mode")
            return self._loss(images, targets, proposals)
        return [self._detect(image, props) for image, props in zip(images, proposals)]

    def _crops(self, image: Tensor, boxes: Tensor) -> Tensor:
        """Warped crops of the (C, H, W) [0, 1] image for (K, 4) boxes, normalised."""
        return warp_regions((image - self.image_mean) / self.image_std, boxes, self.crop_size, self.padding)

    # --- fine-tuning (the engine's training) -----------------------------------------------------------------
    def _loss(self, images: list[Tensor], targets: list[dict], proposals: list[Tensor]) -> dict[str, Tensor]:
        """Cross-entropy over classes + background of `regions_per_image` sampled regions per image."""
        crops, labels = [], []
        for image, target, props in zip(images, targets, proposals):
            boxes, regions = self._sample(image, target, props)
            crops.append(self._crops(image, boxes))
            labels.append(regions)
        crops, labels = torch.cat(crops), torch.cat(labels)
        if not len(labels):
            return {"loss_classifier": self.classifier.weight.sum() * 0.0}
        logits = self.classifier(self.cnn(crops))
        return {"loss_classifier": F.cross_entropy(logits.float(), labels)}

    def _sample(self, image: Tensor, target: dict, proposals: Tensor) -> tuple[Tensor, Tensor]:
        """The fine-tuning regions of one image from its proposals and ground truths: (R, 4) boxes and labels (class
        at IoU >= FG_IOU with a ground truth, else 0), `fg_fraction` of them foreground where there are enough."""
        gt = target["boxes"].float().reshape(-1, 4)
        regions = torch.cat([gt, usable_proposals(proposals, image.shape[-2:])])
        labels = torch.zeros(len(regions), dtype=torch.long, device=regions.device)
        if len(gt):
            iou, match = box_iou(regions, gt).max(1)
            labels = torch.where(iou >= FG_IOU, target["labels"].long().reshape(-1)[match], labels)
        fg, bg = (labels > 0).nonzero()[:, 0], (labels == 0).nonzero()[:, 0]
        n_fg = min(len(fg), round(self.regions_per_image * self.fg_fraction))
        n_bg = min(len(bg), self.regions_per_image - n_fg)
        keep = torch.cat([fg[torch.randperm(len(fg), device=fg.device)[:n_fg]],
                          bg[torch.randperm(len(bg), device=bg.device)[:n_bg]]])
        return regions[keep], labels[keep]

    # --- detection ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def features(self, image: Tensor, boxes: Tensor) -> Tensor:
        """(K, D) penultimate-layer CNN features of the image's (K, 4) regions, computed in chunks of chunk_size."""
        chunks = [self.cnn(self._crops(image, boxes[i:i + self.chunk_size])).float()
                  for i in range(0, len(boxes), self.chunk_size)]
        return torch.cat(chunks) if chunks else boxes.new_zeros(0, self.classifier.in_features)

    @torch.no_grad()
    def _detect(self, image: Tensor, proposals: Tensor) -> dict[str, Tensor]:
        """One image's detections from its first `test_proposals` proposals: SVM scores (as sigmoid(margin)) and
        per-class box regression once fitted, else the fine-tuned CNN's softmax at the proposals."""
        boxes = usable_proposals(proposals, image.shape[-2:], self.test_proposals)
        feats = self.features(image, boxes)
        if bool(self.fitted):
            scores = torch.sigmoid(feats @ self.svm_weight.T + self.svm_bias)
            deltas = torch.einsum("pd,ckd->pck", feats, self.bbox_weight) + self.bbox_bias
            per_class = decode_deltas(boxes, deltas)
        else:
            scores = self.classifier(feats).float().softmax(1)[:, 1:]
            per_class = boxes[:, None].expand(-1, self.num_classes, -1)
        return self._select(per_class, scores, image.shape[-2:])

    def _select(self, boxes: Tensor, scores: Tensor, image_hw) -> dict[str, Tensor]:
        """(P, C, 4) per-class boxes and (P, C) scores -> score threshold, clipping, per-class NMS, top-k; labels
        1..C."""
        box_idx, cls = (scores > self.score_thresh).nonzero(as_tuple=True)
        kept = clip_boxes_to_image(boxes[box_idx, cls], tuple(image_hw))
        scores, labels = scores[box_idx, cls], cls + 1
        valid = remove_small_boxes(kept, 1e-2)
        kept, scores, labels = kept[valid], scores[valid], labels[valid]
        keep = batched_nms(kept, scores, labels, self.nms_thresh)[:self.detections_per_img]
        return {"boxes": kept[keep], "scores": scores[keep], "labels": labels[keep]}

    # --- SVMs and box regressors (the paper's second stage) ------------------------------------------------------
    @torch.no_grad()
    def fit_classifiers(self, batches: Iterable[tuple[list[Tensor], list[dict], list[Tensor]]]) -> dict:
        """Fit the per-class linear SVMs (hard-negative mining) and ridge box regressors on CNN features of every
        region of `batches` (images, targets with labels 1..C as in training, proposals), computed once in eval
        mode; store them in the buffers and set `fitted`. Returns {class index: fit summary}."""
        was_training = self.training
        self.eval()
        started = time.perf_counter()
        try:
            cache = self._cache(batches)
        finally:
            self.train(was_training)
        log.info("rcnn: CNN features of %d regions in %.1f s", len(cache.features), time.perf_counter() - started)
        scale = FEATURE_NORM / max(float(np.linalg.norm(cache.features, axis=1).mean()), 1e-12)
        features = cache.features * scale
        dim = features.shape[1]
        alpha = self.ridge_alpha if self.ridge_alpha is not None else PAPER_RIDGE_ALPHA * dim / PAPER_FEATURES
        summary = {}
        for c in range(self.num_classes):
            w, b, svm_info = fit_svm(features, cache.gt_label == c, cache.class_iou[:, c] < SVM_NEG_IOU,
                                     seed=c, **self.svm_options)
            reg = (cache.best_label == c) & (cache.best_iou >= BBOX_IOU)
            bw, bb = fit_ridge(features[reg], cache.deltas[reg], alpha)
            self.svm_weight[c], self.svm_bias[c] = torch.from_numpy(w * scale), float(b)
            self.bbox_weight[c], self.bbox_bias[c] = torch.from_numpy(bw * scale), torch.from_numpy(bb)
            summary[c] = {**svm_info, "regression_samples": int(reg.sum())}
            log.info("rcnn class %d: SVM on %d positives, %d of %d negatives after %d round(s); box regression on "
                     "%d regions", c + 1, svm_info["positives"], svm_info["negatives_used"],
                     svm_info["negatives"], svm_info["rounds"], int(reg.sum()))
        self.fitted.fill_(True)
        log.info("rcnn: fitted on %d regions, %d features (scaled x%.3g to mean norm %g), ridge alpha %.3g",
                 len(features), dim, scale, FEATURE_NORM, alpha)
        return summary

    def _cache(self, batches: Iterable[tuple[list[Tensor], list[dict], list[Tensor]]]) -> RegionCache:
        """Features and overlaps of all regions (ground truths, then the first fit_proposals proposals) of every
        image of `batches`."""
        parts = []
        for images, targets, proposals in batches:
            for image, target, props in zip(images, targets, proposals):
                parts.append(self._image_regions(image, target, props))
        if not sum(len(part[0]) for part in parts):
            raise CvtoolError("rcnn found no regions to fit its SVMs on", where="model.fit_classifiers",
                              fix="fit on a training set with annotated images and proposals")
        return RegionCache(*(np.concatenate(column) for column in zip(*parts)))

    def _image_regions(self, image: Tensor, target: dict, proposals: Tensor) -> tuple[np.ndarray, ...]:
        """RegionCache columns of one image."""
        gt = target["boxes"].float().reshape(-1, 4)
        labels = target["labels"].long().reshape(-1) - self.label_offset
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"rcnn: target labels must be 1..{self.num_classes} (label_offset added), got "
                             f"{sorted(set((labels + self.label_offset).tolist()))}")
        regions = torch.cat([gt, usable_proposals(proposals, image.shape[-2:], self.fit_proposals)])
        gt_label = torch.cat([labels, labels.new_full((len(regions) - len(gt),), -1)])
        class_iou = regions.new_zeros(len(regions), self.num_classes)
        best_iou, best_label = regions.new_zeros(len(regions)), labels.new_full((len(regions),), -1)
        deltas = regions.new_zeros(len(regions), 4)
        if len(gt):
            iou = box_iou(regions, gt)
            for c in labels.unique():
                class_iou[:, c] = iou[:, labels == c].amax(1)
            best_iou, match = iou.max(1)
            best_label, deltas = labels[match], encode_deltas(regions, gt[match])
        columns = (self.features(image, regions), gt_label, class_iou, best_iou, best_label, deltas)
        return tuple(column.cpu().numpy() for column in columns)


def fit_svm(features: np.ndarray, positive: np.ndarray, negative: np.ndarray, *, C: float, pos_weight: float,
            negatives: int, rounds: int, seed: int) -> tuple[np.ndarray, float, dict]:
    """One class's linear SVM (liblinear, L2-regularised hinge loss, as the paper) on the `positive` rows against
    the `negative` rows of (N, D) `features`, mined: first a random `negatives` of them, then each further round
    adds every negative scoring above -1 (inside the margin) and refits. Returns (D,) weights, bias, summary."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.svm import LinearSVC

    pos, neg = np.flatnonzero(positive), np.flatnonzero(negative)
    info = {"positives": len(pos), "negatives": len(neg), "negatives_used": 0, "rounds": 0}
    if not len(pos) or not len(neg):
        log.warning("rcnn: no %s to fit an SVM for a class on; it will not be detected",
                    "positives" if not len(pos) else "negatives")
        return np.zeros(features.shape[1], np.float32), UNFITTED_BIAS, info
    rng = np.random.default_rng(seed)
    active = np.sort(rng.choice(neg, min(negatives, len(neg)), replace=False))
    svm = LinearSVC(C=C, loss="hinge", dual=True, intercept_scaling=10.0, class_weight={1: pos_weight, 0: 1.0},
                    max_iter=10000, random_state=seed)
    for round_ in range(1, rounds + 1):
        rows = np.concatenate([pos, active])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            svm.fit(features[rows], np.r_[np.ones(len(pos)), np.zeros(len(active))])
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            log.warning("rcnn: an SVM did not converge in round %d (liblinear, %d iterations)", round_, svm.max_iter)
        info.update(negatives_used=len(active), rounds=round_)
        hard = neg[svm.decision_function(features[neg]) > HARD_MARGIN]
        new = np.setdiff1d(hard, active, assume_unique=True)
        if round_ == rounds or not len(new):
            break
        active = np.union1d(active, new)
    return svm.coef_[0].astype(np.float32), float(svm.intercept_[0]), info


def fit_ridge(features: np.ndarray, deltas: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression (intercept not penalised) from (N, D) features to (N, 4) box deltas: (4, D) weights and
    (4,) biases; with no samples, zeros (the boxes stay where the proposals are)."""
    from sklearn.linear_model import Ridge

    if not len(features):
        return np.zeros((4, features.shape[1]), np.float32), np.zeros(4, np.float32)
    ridge = Ridge(alpha=alpha).fit(features, deltas)
    return ridge.coef_.astype(np.float32), ridge.intercept_.astype(np.float32)


def _channel_stats(values, default: float, in_channels: int, key: str) -> tuple[float, ...]:
    """image_mean / image_std: one value per input channel (None: ImageNet's for RGB, else `default`)."""
    if values is None:
        imagenet = {"model.image_mean": (0.485, 0.456, 0.406), "model.image_std": (0.229, 0.224, 0.225)}[key]
        return imagenet if in_channels == 3 else (default,) * in_channels
    values = tuple(float(v) for v in values)
    if len(values) != in_channels:
        raise CvtoolError(f"{key} needs one value per input channel ({in_channels}), got {len(values)}", where=key,
                          fix=f"give {in_channels} value(s) or null for the default")
    return values


def _backbone(name: str, num_classes: int, in_channels: int, crop_size: int,
              options: Mapping[str, object] | None) -> tuple[nn.Module, nn.Linear]:
    """The registered classifier `name` for num_classes + 1 outputs, split into (features, last Linear)."""
    info = model_info(name)
    if info.task != "classification":
        raise CvtoolError(f"model.backbone={name} is a {info.task} model, not a classifier", where="model.backbone",
                          fix=f"use a classifier: {', '.join(list_models(task='classification'))}")
    if crop_size < info.min_size:
        raise CvtoolError(f"model.backbone={name} needs crops of at least {info.min_size} px, got {crop_size}",
                          where="model.crop_size", fix=f"set model.crop_size={info.min_size} or more")
    options = {"input_size": crop_size, **(options or {})}
    cnn = create_model(name, num_classes=num_classes + 1, in_channels=in_channels, **options)
    last = replace_last_linear(cnn)
    if last is None:
        raise CvtoolError(f"model.backbone={name} has no last linear layer to give the SVMs its features",
                          where="model.backbone", fix="use a classifier ending in nn.Linear, e.g. shapes_cnn")
    return cnn, last


@register_model("rcnn", task="detection", min_size=8,
                description="R-CNN (Girshick et al. 2014): warped proposals through a CNN, per-class linear SVMs "
                            "(hard-negative mining) and ridge box regression; external proposals")
def rcnn(num_classes: int, in_channels: int = 3, weights: str | None = None, *, backbone: str = "shapes_cnn",
         backbone_options: Mapping[str, object] | None = None, crop_size: int = 48, padding: float | None = None,
         proposals: str = "selective_search", regions_per_image: int = 32, fg_fraction: float = 0.25,
         test_proposals: int = 2000, fit_proposals: int = 2000, chunk_size: int = 256, svm_C: float = 0.001,
         svm_pos_weight: float = 2.0, svm_negatives: int = 2000, svm_rounds: int = 3, ridge_alpha: float | None = None,
         score_thresh: float = 0.05, nms_thresh: float = 0.3, detections_per_img: int = 100,
         image_mean: list[float] | None = None, image_std: list[float] | None = None) -> RCNN:
    """`backbone` (a registered classifier, built with `backbone_options`, e.g. weights=DEFAULT) on crop_size px
    warps with `padding` px of context (None: the paper's 16 px at 227, scaled), on `proposals` (a method or file the
    task attaches to the data); fine-tuned on regions_per_image regions per image, fg_fraction foreground. SVMs: C,
    positive weight, initial random negatives, mining rounds; ridge_alpha None: the paper's 1000 scaled by feature
    size / 9216. Eval: the first test_proposals proposals,
    scores sigmoid(SVM margin) (softmax before fitting) above score_thresh, per-class NMS at nms_thresh."""
    reject_weights_name("rcnn", weights)
    if proposals == "rpn":  # the proposals themselves are data: the task reads them (model.proposals)
        raise CvtoolError("rcnn reads external proposals, it has no RPN", where="model.proposals",
                          fix="use selective_search, edge, kmeans or a proposal file; an RPN: model=fast_rcnn "
                              "model.proposals=rpn")
    padding = PAPER_PADDING * crop_size / PAPER_CROP if padding is None else float(padding)
    if not 0 <= padding < crop_size / 2:
        raise CvtoolError(f"model.padding must be in [0, crop_size / 2), got {padding}", where="model.padding",
                          fix=f"e.g. model.padding={PAPER_PADDING * crop_size / PAPER_CROP:.1f} (16 px at 227)")
    cnn, last = _backbone(backbone, num_classes, in_channels, crop_size, backbone_options)
    svm = {"C": svm_C, "pos_weight": svm_pos_weight, "negatives": svm_negatives, "rounds": svm_rounds}
    return RCNN(cnn, last, num_classes, crop_size=crop_size, padding=padding, regions_per_image=regions_per_image,
                fg_fraction=fg_fraction, test_proposals=test_proposals, fit_proposals=fit_proposals,
                chunk_size=chunk_size, svm=svm, ridge_alpha=ridge_alpha, score_thresh=score_thresh,
                nms_thresh=nms_thresh, detections_per_img=detections_per_img,
                image_mean=_channel_stats(image_mean, 0.5, in_channels, "model.image_mean"),
                image_std=_channel_stats(image_std, 0.25, in_channels, "model.image_std"))
