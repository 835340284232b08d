"""PASCAL VOC detection AP with the devkit's semantics, vectorised over all detections of a class.

Boxes are VOC pixel boxes (1-based, inclusive: width = xmax - xmin + 1). Per class: npos counts non-difficult
ground truth; detections are ranked by descending score with a stable sort (ties keep their input order); each is
assigned the ground-truth box of its image and class with the highest IoU (difficult ones included, first one on
ties); at IoU >= 0.5 a difficult match is ignored (neither TP nor FP), the first match of a box is a TP and every
later one an FP (no fall-back to another box); below 0.5 it is an FP.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cvtool.utils import distributed as dist

from .base import mean_defined, to_numpy

IOU_THRESHOLD = 0.5
PROTOCOL = ("VOC2007 11-point and VOC2010+ area AP, IoU ≥ 0.5 with +1 pixel convention, difficult ignored, "
            "stable score sort, no fall-back for duplicate detections")


@dataclass
class Boxes:
    """Labelled VOC pixel boxes of many images: image index (into the split), class index, box (N, 4), and the
    `difficult` flags of ground truth or the `scores` of detections (zeros where they do not apply)."""

    image: np.ndarray
    label: np.ndarray
    box: np.ndarray
    difficult: np.ndarray
    scores: np.ndarray

    @classmethod
    def make(cls, image, label, box, difficult=None, scores=None) -> Boxes:
        box = np.asarray(box, dtype=np.float64).reshape(-1, 4)
        n = len(box)
        return cls(np.broadcast_to(np.asarray(image, dtype=np.int64), (n,)).copy(),
                   np.broadcast_to(np.asarray(label, dtype=np.int64), (n,)).copy(), box,
                   np.zeros(n, bool) if difficult is None else np.asarray(difficult, dtype=bool).reshape(n),
                   np.zeros(n) if scores is None else np.asarray(scores, dtype=np.float64).reshape(n))

    @classmethod
    def concat(cls, parts: list[Boxes]) -> Boxes:
        if not parts:
            return cls.make(0, 0, np.zeros((0, 4)))
        return cls(*(np.concatenate([getattr(p, name) for p in parts]) for name in
                     ("image", "label", "box", "difficult", "scores")))

    def select(self, keep: np.ndarray) -> Boxes:
        return Boxes(self.image[keep], self.label[keep], self.box[keep], self.difficult[keep], self.scores[keep])

    def of_class(self, label: int) -> Boxes:
        return self.select(self.label == label)


def pairwise_voc_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of row-aligned boxes a[i], b[i] with the devkit's +1 convention on widths and heights."""
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1.0, 0.0)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0)
    area_b = (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
    return inter / (area_a + area_b - inter)


def match_class(gt: Boxes, dets: Boxes, iou_threshold: float = IOU_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(tp, fp) flags of one class's detections in ranked order, ignored (difficult) detections dropped."""
    order = np.argsort(-dets.scores, kind="stable")
    det_image, det_box = dets.image[order], dets.box[order]
    gt_order = np.argsort(gt.image, kind="stable")
    gt_image, gt_box, gt_difficult = gt.image[gt_order], gt.box[gt_order], gt.difficult[gt_order]
    # every (detection, ground truth of the same image) pair, grouped by detection
    start = np.searchsorted(gt_image, det_image, side="left")
    count = np.searchsorted(gt_image, det_image, side="right") - start
    pair_det = np.repeat(np.arange(len(order)), count)
    first_pair = np.cumsum(count) - count
    pair_gt = np.repeat(start, count) + np.arange(count.sum()) - np.repeat(first_pair, count)
    iou = pairwise_voc_iou(det_box[pair_det], gt_box[pair_gt])
    best_iou = np.full(len(order), -np.inf)
    best_gt = np.full(len(order), -1)
    has_gt = count > 0
    if has_gt.any():
        best_iou[has_gt] = np.maximum.reduceat(iou, first_pair[has_gt])
        is_best = np.flatnonzero(iou == best_iou[pair_det])
        dets_with_best, first = np.unique(pair_det[is_best], return_index=True)  # first best box per detection
        best_gt[dets_with_best] = pair_gt[is_best[first]]
    matched = best_iou >= iou_threshold
    ignored = matched & gt_difficult[best_gt]
    candidates = np.flatnonzero(matched & ~ignored)
    _, first_claim = np.unique(best_gt[candidates], return_index=True)  # ranked first claim of each box wins
    tp = np.zeros(len(order), dtype=bool)
    tp[candidates[first_claim]] = True
    keep = ~ignored
    return tp[keep], ~tp[keep]


def average_precision(tp: np.ndarray, fp: np.ndarray, npos: int) -> tuple[float, float]:
    """(VOC2007 11-point AP, VOC2010+ area AP) of ranked TP/FP flags against npos positives (npos > 0)."""
    tp_cum, fp_cum = np.cumsum(tp, dtype=np.int64), np.cumsum(fp, dtype=np.int64)
    recall = tp_cum / npos
    precision = tp_cum / np.maximum(tp_cum + fp_cum, 1)
    best_after = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    # 11-point: max precision at recall >= k/10, tested exactly in integers (10 * tp >= k * npos)
    first = np.searchsorted(10 * tp_cum, np.arange(11) * npos, side="left")
    # summed, then divided (the devkit's running sum of p / 11 gives 1.0000000000000002 for a perfect detector)
    ap07 = sum(float(best_after[i]) if i < len(best_after) else 0.0 for i in first) / 11.0
    # area under the monotone precision envelope, summed where recall changes
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.maximum.accumulate(np.concatenate(([0.0], precision, [0.0]))[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    ap10 = float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    return ap07, ap10


def voc_metrics(gt: Boxes, dets: Boxes, class_names: list[str], curves: dict | None = None) -> dict:
    """{"voc07": {"mAP", "per_class_AP"}, "voc10": {...}}; a class without non-difficult GT is null.
    `curves`, when given, receives each class's ranked (recall, precision) points."""
    per_class: dict[str, dict[str, float | None]] = {"voc07": {}, "voc10": {}}
    for label, name in enumerate(class_names):
        class_gt = gt.of_class(label)
        npos = int((~class_gt.difficult).sum())
        if npos == 0:
            per_class["voc07"][name] = per_class["voc10"][name] = None
            continue
        tp, fp = match_class(class_gt, dets.of_class(label))
        per_class["voc07"][name], per_class["voc10"][name] = average_precision(tp, fp, npos)
        if curves is not None:
            tp_cum = np.cumsum(tp)
            curves[name] = (tp_cum / npos, tp_cum / np.maximum(np.arange(1, len(tp) + 1), 1))
    return {key: {"mAP": mean_defined(list(values.values())), "per_class_AP": values}
            for key, values in per_class.items()}


def model_boxes_to_voc(boxes: np.ndarray) -> np.ndarray:
    """Continuous 0-based (x1, y1, x2, y2) model boxes -> 1-based inclusive VOC pixel boxes (x1 + 1, y1 + 1, x2,
    y2), the convention of the devkit's result files (float64, exact for float32 inputs)."""
    voc = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    voc[:, :2] += 1.0
    return voc


class VOCEvaluator:
    """Evaluator for detection models on a VOC split: `process(inputs, outputs)` with inputs["image_id"] (ids of
    the split) and per-image outputs {"boxes": 0-based xyxy, "scores", "labels": 0-based class indices}."""

    def __init__(self, gt: Boxes, image_ids: list[str], class_names: list[str]):
        self.gt, self.class_names = gt, class_names
        self.index = {image_id: i for i, image_id in enumerate(image_ids)}
        self.reset()

    def reset(self) -> None:
        self.parts: list[Boxes] = []
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # class -> (recall, precision), for plots

    def process(self, inputs: dict, outputs: list[dict]) -> None:
        for image_id, output in zip(inputs["image_id"], outputs, strict=True):
            scores = to_numpy(output["scores"], np.float64).reshape(-1)
            self.add(Boxes.make(self.index[str(image_id)], to_numpy(output["labels"]),
                                model_boxes_to_voc(to_numpy(output["boxes"])), scores=scores))

    def add(self, detections: Boxes) -> None:
        """Detections in input order (the order that breaks score ties)."""
        self.parts.append(detections)

    def detections(self) -> Boxes:
        """All detections in input order; under DDP, every rank's, put back in split order (within an image:
        the model's order), which is also the order `cvtool predict` writes them to result files."""
        gathered = dist.all_gather_objects(self.parts)
        merged = Boxes.concat([part for parts in gathered for part in parts])
        return merged if len(gathered) == 1 else merged.select(np.argsort(merged.image, kind="stable"))

    def protocol(self) -> str:
        return PROTOCOL

    def evaluate(self) -> dict:
        return voc_metrics(self.gt, self.detections(), self.class_names, self.curves)
