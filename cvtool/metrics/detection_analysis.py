"""Detection error analysis of one evaluation: a confusion matrix with a background class, precision / recall / F1
against the score threshold, and the TIDE error breakdown (`tide`). numpy only (stored predictions load no torch).

Confusion matrix, (C + 1) x (C + 1), rows ground truth, columns predictions, index C = background: detections
scoring >= score_threshold; per image, pairs with IoU >= iou_threshold matched one to one whatever their classes
(highest IoU first; ties: higher score); a matched pair counts at [gt class, predicted class], a box left unmatched
at [class, background] (missed), a detection left unmatched at [background, class] (false positive). Ignored
ground truth (VOC difficult, COCO crowd) is matched after the others and never counted: a detection left over that
overlaps one at IoU >= iou_threshold is dropped.

Precision / recall / F1 against the score threshold: the class-aware matching of the AP evaluation at
iou_threshold (detections matching ignored ground truth dropped), per class and over all classes (micro).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cvtool.errors import CvtoolError

from . import tide
from .base import ratio
from .box_matching import RULES, DetectionData, ImageOverlaps, match_by_iou, match_by_score, overlaps

GRID = 101  # thresholds of the stored P/R/F1 curves


def check_settings(settings: Mapping) -> None:
    """The analysis block's thresholds are IoUs in (0, 1] (tide_bg_iou in [0, tide_fg_iou)) and a score."""
    for key in ("iou_threshold", "tide_fg_iou"):
        value = settings[key]
        if not _is_number(value) or not 0 < value <= 1:
            raise CvtoolError(f"analysis.{key}={value!r} is not an IoU in (0, 1]", where=f"analysis.{key}",
                              fix=f"pass a number such as analysis.{key}=0.5")
    bg = settings["tide_bg_iou"]
    if not _is_number(bg) or not 0 <= bg < settings["tide_fg_iou"]:
        raise CvtoolError(f"analysis.tide_bg_iou={bg!r} is not an IoU in [0, tide_fg_iou={settings['tide_fg_iou']})",
                          where="analysis.tide_bg_iou", fix="pass a background IoU below the foreground one (0.1)")
    if not _is_number(settings["score_threshold"]):
        raise CvtoolError(f"analysis.score_threshold={settings['score_threshold']!r} is not a number",
                          where="analysis.score_threshold", fix="pass a detection score such as 0.5")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def confusion_matrix(data: DetectionData, images: list[ImageOverlaps], score_threshold: float,
                     iou_threshold: float) -> np.ndarray:
    """(C + 1) x (C + 1) counts, rows ground truth, columns predictions, last index background (module docstring)."""
    bg = len(data.class_names)
    confusion = np.zeros((bg + 1, bg + 1), dtype=np.int64)
    for image in images:
        keep = data.dets.scores[image.dets] >= score_threshold
        matched, ignored = match_by_iou(data, image, iou_threshold, keep)
        det_label, gt_label = data.dets.label[image.dets], data.gt.label[image.gts]
        hit = matched >= 0
        np.add.at(confusion, (gt_label[matched[hit]], det_label[hit]), 1)
        missed = ~data.gt.difficult[image.gts]
        missed[matched[hit]] = False
        np.add.at(confusion, (gt_label[missed], bg), 1)
        np.add.at(confusion, (bg, det_label[keep & ~hit & ~ignored]), 1)
    return confusion


def _f1(p: float | None, r: float | None) -> float | None:
    if p is None or r is None:
        return None
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def threshold_curve(scores: np.ndarray, tp: np.ndarray, npos: int, grid: np.ndarray) -> dict:
    """P/R/F1 of detections scoring >= each grid threshold, and the F1-maximising threshold over every distinct
    score ("best", null without detections or positives). `scores`/`tp` of non-ignored detections."""
    order = np.argsort(-scores, kind="stable")
    scores, tp_cum = scores[order], np.cumsum(tp[order])

    def at(count: int) -> tuple[float | None, float | None, float | None]:
        hits = int(tp_cum[count - 1]) if count else 0
        p, r = ratio(hits, count), ratio(hits, npos)
        return p, r, _f1(p, r)

    counts = np.searchsorted(-scores, -grid, side="right")  # detections scoring >= each threshold
    points = [at(int(c)) for c in counts]
    curve = {"thresholds": grid.tolist(), **{k: [p[i] for p in points] for i, k in
                                             enumerate(("precision", "recall", "f1"))}, "best": None}
    if len(scores) and npos:
        ends = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) + 1  # every distinct score's count
        f1 = 2 * tp_cum[ends - 1] / (ends + npos)
        k = int(np.argmax(f1))
        p, r, f = at(int(ends[k]))
        curve["best"] = {"threshold": float(scores[ends[k] - 1]), "precision": p, "recall": r, "f1": f}
    return curve


def score_grid(scores: np.ndarray) -> np.ndarray:
    """0, 0.01, ..., 1 for scores in [0, 1]; else GRID points from the lowest to the highest score."""
    if not len(scores) or (scores.min() >= 0 and scores.max() <= 1):
        return np.linspace(0.0, 1.0, GRID)
    return np.linspace(scores.min(), scores.max(), GRID)


def pr_curves(data: DetectionData, matched: np.ndarray, ignored: np.ndarray) -> dict:
    """{"overall": curve, "per_class": {class: curve}} from the class-aware matching's (matched, ignored) flags."""
    keep, tp = ~ignored, matched >= 0
    scores, labels = data.dets.scores[keep], data.dets.label[keep]
    npos = np.bincount(data.gt.label[~data.gt.difficult], minlength=len(data.class_names))
    grid = score_grid(scores)
    return {"overall": threshold_curve(scores, tp[keep], int(npos.sum()), grid),
            "per_class": {name: threshold_curve(scores[labels == k], tp[keep][labels == k], int(npos[k]), grid)
                          for k, name in enumerate(data.class_names)}}


def class_aware(data: DetectionData, images: list[ImageOverlaps], threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(matched box or -1, ignored) per detection of the AP evaluation's matching at `threshold`."""
    matched, ignored = np.full(len(data.dets.scores), -1), np.zeros(len(data.dets.scores), bool)
    for image in images:
        local, local_ignored = match_by_score(data, image, threshold)
        ignored[image.dets] = local_ignored
        matched[image.dets] = np.append(image.gts, -1)[local]  # local -1 (unmatched) picks the appended -1
    return matched, ignored


def analyse(data: DetectionData, settings: Mapping) -> dict:
    """The detection_analysis.json content: settings, confusion matrix, P/R/F1 curves and the TIDE breakdown."""
    check_settings(settings)
    images = overlaps(data)
    out = tide.classify(data, images, settings["tide_fg_iou"], settings["tide_bg_iou"])
    same = settings["iou_threshold"] == settings["tide_fg_iou"]
    matched, ignored = (out.matched, out.ignored) if same else class_aware(data, images, settings["iou_threshold"])
    confusion = confusion_matrix(data, images, settings["score_threshold"], settings["iou_threshold"])
    return {"settings": {**{k: settings[k] for k in ("score_threshold", "iou_threshold", "tide_fg_iou",
                                                     "tide_bg_iou")}, "matching": RULES[data.rule]},
            "classes": list(data.class_names),
            "confusion": {"labels": [*data.class_names, "background"], "rows": "ground truth",
                          "columns": "prediction", "matrix": confusion.tolist()},
            "pr_vs_score": pr_curves(data, matched, ignored),
            "tide": tide.breakdown(data, out)}
