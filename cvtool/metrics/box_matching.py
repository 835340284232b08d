"""Per-image overlaps and greedy matching of detections to ground truth, with the rules of the AP evaluations
(VOC devkit, pycocotools COCOeval), for the detection error analysis. numpy only.

Boxes are VOC pixel boxes (`cvtool.metrics.voc.Boxes`, +1 convention); COCO [x, y, w, h] boxes are stored as
(x, y, x + w - 1, y + h - 1), for which the +1 convention gives COCO's continuous IoU. Ignored ground truth (VOC
difficult, COCO iscrowd) sits in `Boxes.difficult`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .voc import Boxes, pairwise_voc_iou

RULES = {"voc": "VOC devkit matching (a detection takes its highest-IoU box of its class, used or not; "
                "difficult boxes ignored)",
         "coco": "COCOeval matching (a detection takes its highest-IoU unmatched box of its class, else a crowd "
                 "region, IoU with a crowd = intersection / detection area)"}


@dataclass
class DetectionData:
    """Ground truth and detections of one evaluation: detections in input order (the order breaking score ties),
    labels indexing `class_names`, and the matching rule of the dataset's AP ("voc" or "coco")."""

    gt: Boxes
    dets: Boxes
    class_names: list[str]
    rule: str

    def ranked(self) -> np.ndarray:
        """Detection indices by descending score, ties in input order (the AP evaluations' ranking)."""
        return np.argsort(-self.dets.scores, kind="stable")


@dataclass
class ImageOverlaps:
    """One image: its detections (indices into DetectionData.dets, ranked), its ground truth (indices into .gt)
    and their IoU matrix (detections x ground truth)."""

    dets: np.ndarray
    gts: np.ndarray
    iou: np.ndarray


def coco_detection_data(gt_data: dict, results: list[dict]) -> DetectionData | None:
    """DetectionData of a COCO instances dict and bbox results (None when the results carry no boxes)."""
    if any("bbox" not in r for r in results):
        return None
    categories = sorted(gt_data["categories"], key=lambda c: c["id"])
    label = {c["id"]: k for k, c in enumerate(categories)}
    image = {im["id"]: k for k, im in enumerate(gt_data["images"])}
    anns = gt_data["annotations"]

    def boxes(items: list[dict], **extra) -> Boxes:
        xywh = np.array([it["bbox"] for it in items], dtype=np.float64).reshape(-1, 4)
        return Boxes.make([image[it["image_id"]] for it in items], [label[it["category_id"]] for it in items],
                          np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1.0], axis=1), **extra)

    gt = boxes(anns, difficult=[bool(a["iscrowd"] or a.get("ignore", 0)) for a in anns])
    return DetectionData(gt, boxes(results, scores=[r["score"] for r in results]), [c["name"] for c in categories],
                         "coco")


def _crowd_overlap(iou: np.ndarray, det_area: np.ndarray, gt_area: np.ndarray) -> np.ndarray:
    """COCO's overlap with a crowd region, intersection / detection area, recovered from the IoU
    (intersection = IoU (A + B) / (1 + IoU))."""
    inter = iou * (det_area[:, None] + gt_area[None, :]) / (1.0 + iou)
    return np.divide(inter, det_area[:, None], out=np.zeros_like(inter), where=det_area[:, None] > 0)


def _area(box: np.ndarray) -> np.ndarray:
    return np.maximum(box[:, 2] - box[:, 0] + 1.0, 0.0) * np.maximum(box[:, 3] - box[:, 1] + 1.0, 0.0)


def iou_matrix(data: DetectionData, dets: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """IoU of detections x ground truth (COCO rule: intersection / detection area for crowd regions)."""
    a, b = data.dets.box[dets], data.gt.box[gts]
    iou = pairwise_voc_iou(np.repeat(a, len(b), axis=0), np.tile(b, (len(a), 1))).reshape(len(a), len(b))
    iou = np.nan_to_num(iou)  # two empty boxes
    crowd = data.gt.difficult[gts]
    if data.rule == "coco" and crowd.any():
        iou[:, crowd] = _crowd_overlap(iou[:, crowd], _area(a), _area(b[crowd]))
    return iou


def overlaps(data: DetectionData) -> list[ImageOverlaps]:
    """Every image holding a detection or a ground-truth box, with its IoU matrix."""
    ranked = data.ranked()
    by_image = ranked[np.argsort(data.dets.image[ranked], kind="stable")]
    gt_order = np.argsort(data.gt.image, kind="stable")
    images = np.union1d(data.dets.image, data.gt.image)
    det_split = np.searchsorted(data.dets.image[by_image], images, side="right")[:-1]
    gt_split = np.searchsorted(data.gt.image[gt_order], images, side="right")[:-1]
    return [ImageOverlaps(d, g, iou_matrix(data, d, g))
            for d, g in zip(np.split(by_image, det_split), np.split(gt_order, gt_split))]


def match_by_score(data: DetectionData, image: ImageOverlaps, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Class-aware matching of one image's ranked detections at IoU >= threshold under the data's rule:
    (matched ground truth, local index or -1; detection ignored) per detection."""
    same = data.dets.label[image.dets][:, None] == data.gt.label[image.gts][None, :]
    iou = np.where(same, image.iou, -1.0)
    ignored_gt = data.gt.difficult[image.gts]
    matched = np.full(len(image.dets), -1)
    ignored = np.zeros(len(image.dets), dtype=bool)
    if not len(image.gts):
        return matched, ignored
    if data.rule == "voc":  # each detection's best box, whatever its state (no fall-back); its first claim wins
        best = iou.argmax(axis=1)
        hit = iou[np.arange(len(best)), best] >= threshold
        ignored = hit & ignored_gt[best]
        claims = np.flatnonzero(hit & ~ignored)
        _, first = np.unique(best[claims], return_index=True)
        matched[claims[first]] = best[claims[first]]
        return matched, ignored
    used = np.zeros(len(image.gts), dtype=bool)
    for d in np.flatnonzero(iou.max(axis=1) >= threshold):  # COCOeval: the best unmatched box, else a crowd
        free = np.where(~ignored_gt & ~used, iou[d], -1.0)
        g = int(np.argmax(free))
        if free[g] >= threshold:
            used[g], matched[d] = True, g
        else:
            ignored[d] = bool(np.any(iou[d][ignored_gt] >= threshold))
    return matched, ignored


def match_by_iou(data: DetectionData, image: ImageOverlaps, threshold: float,
                 keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class-agnostic one-to-one matching of the kept detections: pairs with IoU >= threshold, highest IoU first
    (ties: higher score, then rank); non-ignored ground truth first, then the detections left over against ignored
    ground truth (many to one). (matched ground truth, local index or -1; detection ignored) per detection."""
    ignored_gt = data.gt.difficult[image.gts]
    matched = np.full(len(image.dets), -1)
    used = np.zeros(len(image.gts), dtype=bool)
    pairs = np.argwhere((image.iou >= threshold) & keep[:, None] & ~ignored_gt[None, :])
    if len(pairs):
        ious = image.iou[pairs[:, 0], pairs[:, 1]]
        scores = data.dets.scores[image.dets][pairs[:, 0]]
        for d, g in pairs[np.lexsort((pairs[:, 0], -scores, -ious))]:
            if matched[d] < 0 and not used[g]:
                matched[d], used[g] = g, True
    near_ignored = (image.iou[:, ignored_gt] >= threshold).any(axis=1) if ignored_gt.any() else False
    return matched, keep & (matched < 0) & near_ignored
