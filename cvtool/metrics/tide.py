"""TIDE error breakdown (Bolya et al., ECCV 2020) on the project's own matching and AP, with the rules of the
reference code (`tidecv` 1.0.1): each false positive at the foreground IoU t_f gets the first error type whose test
it passes, against the non-ignored ground truth of its image (an image without any: Bkg):

Loc   t_b <= IoU <= t_f (both inclusive) with its best box of its class, matched or not;
Cls   IoU >= t_f with a box of another class;      Dupe  IoU >= t_f with a box of its class already matched;
Bkg   IoU <= t_b with every box;                   Both  anything else (tidecv's "Other").
Miss is a box never matched and not the target of a Cls or Loc error (the best box of the test it passed). dAP of a
type is the mean AP after TIDE's oracle fix of every error of that type minus the base mean AP (VOC2010+ area AP at
IoU t_f, `cvtool.metrics.voc.average_precision`, not tidecv's 101-point AP): a Cls/Loc error becomes a true
positive (of its target's class) if its target is unmatched and it is the highest-scoring Cls or Loc error aimed at
that target, and is removed otherwise; Dupe/Both/Bkg are removed, Miss lowers the box count. FalsePos removes every
false positive; FalseNeg sets each class's box count to its true positives. The mean runs over the classes with
ground truth, leaving out one that a fix leaves without boxes and without detections (as tidecv).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .box_matching import DetectionData, ImageOverlaps, match_by_score
from .voc import average_precision

ERROR_TYPES = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")
AP_PROTOCOL = "VOC2010+ area AP (cvtool.metrics.voc.average_precision), mean over classes with ground truth"
NONE, CLS, LOC, BOTH, DUPE, BKG = range(6)  # detection error codes; NONE: a true positive or ignored


@dataclass
class Outcome:
    """Per detection (input order): matched box (-1), ignored, error code, its target box (-1), whether it is the
    one fixing its target; per box: matched, missed."""

    matched: np.ndarray
    ignored: np.ndarray
    error: np.ndarray
    target: np.ndarray
    fixer: np.ndarray
    gt_matched: np.ndarray
    missed: np.ndarray


def _masked(iou: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per detection: the highest IoU over the masked boxes (-1 when none) and that box."""
    values = np.where(mask, iou, -1.0)
    return values.max(axis=1, initial=-1.0), values.argmax(axis=1)


def _errors(iou: np.ndarray, same: np.ndarray, used: np.ndarray, fg: float, bg: float) -> tuple[np.ndarray, ...]:
    """(error code, target local box or -1) of an image's false positives from their IoU with its non-ignored
    boxes (the columns), in the order of the module docstring."""
    other, other_box = _masked(iou, ~same)
    dupe, _ = _masked(iou, same & used[None, :])
    own, own_box = _masked(iou, same)
    code = np.select([(own >= bg) & (own <= fg), other >= fg, dupe >= fg, np.maximum(own, other) <= bg],
                     [LOC, CLS, DUPE, BKG], BOTH)
    return code, np.select([code == CLS, code == LOC], [other_box, own_box], -1)


def classify(data: DetectionData, images: list[ImageOverlaps], fg: float, bg: float) -> Outcome:
    """Match every image at IoU fg and type each false positive (see the module docstring)."""
    n, m = len(data.dets.scores), len(data.gt.label)
    out = Outcome(np.full(n, -1), np.zeros(n, bool), np.zeros(n, np.int64), np.full(n, -1), np.zeros(n, bool),
                  np.zeros(m, bool), np.zeros(m, bool))
    for image in images:
        matched, ignored = match_by_score(data, image, fg)
        out.matched[image.dets] = np.append(image.gts, -1)[matched]  # -1: unmatched
        out.ignored[image.dets] = ignored
        fp = np.flatnonzero((matched < 0) & ~ignored)
        valid = ~data.gt.difficult[image.gts]
        gts = image.gts[valid]
        used = np.zeros(len(image.gts), bool)
        used[matched[matched >= 0]] = True
        out.gt_matched[image.gts] = used
        out.missed[image.gts] = valid & ~used
        if not len(fp):
            continue
        if not len(gts):
            out.error[image.dets[fp]] = BKG
            continue
        same = data.dets.label[image.dets[fp]][:, None] == data.gt.label[gts][None, :]
        code, box = _errors(image.iou[np.ix_(fp, np.flatnonzero(valid))], same, used[valid], fg, bg)
        out.error[image.dets[fp]] = code
        aimed = np.flatnonzero(box >= 0)  # ranked: the first Cls/Loc error aimed at a box is the one fixing it
        _, first = np.unique(box[aimed], return_index=True)
        out.target[image.dets[fp[aimed]]] = gts[box[aimed]]
        out.fixer[image.dets[fp[aimed[first]]]] = ~used[valid][box[aimed[first]]]
        out.missed[gts[box[aimed]]] = False
    return out


def mean_ap(data: DetectionData, label: np.ndarray, tp: np.ndarray, keep: np.ndarray, npos: np.ndarray,
            classes: np.ndarray) -> float:
    """Mean VOC2010+ area AP over `classes` of the kept detections (ranked as the AP evaluation ranks them) with
    `npos` positives per class: a class left without positives scores 0, or is left out if it has no kept detection
    either (tidecv's empty class); 0 when every class is left out."""
    ranked = data.ranked()
    label, tp, keep = label[ranked], tp[ranked], keep[ranked]
    aps = []
    for c in classes:
        flags = tp[keep & (label == c)]
        if npos[c] > 0 or len(flags):
            aps.append(average_precision(flags, ~flags, int(npos[c]))[1] if npos[c] > 0 else 0.0)
    return float(np.mean(aps)) if aps else 0.0


def _fixed(data: DetectionData, out: Outcome, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, tp, keep, npos) after the oracle fix of one error type (or FalsePos / FalseNeg, or "" for none)."""
    num_classes = len(data.class_names)
    label, tp = data.dets.label.copy(), out.matched >= 0
    keep = ~out.ignored
    valid = ~data.gt.difficult
    npos = np.bincount(data.gt.label[valid], minlength=num_classes)
    code = {"Cls": CLS, "Loc": LOC, "Both": BOTH, "Dupe": DUPE, "Bkg": BKG}.get(kind)
    if kind in ("Cls", "Loc"):
        hit = (out.error == code) & out.fixer
        label[hit] = data.gt.label[out.target[hit]]
        tp = tp | hit
        keep &= (out.error != code) | hit
    elif code is not None:
        keep &= out.error != code
    elif kind == "Miss":
        npos = npos - np.bincount(data.gt.label[out.missed], minlength=num_classes)
    elif kind == "FalsePos":
        keep &= tp
    elif kind == "FalseNeg":
        npos = np.bincount(data.gt.label[out.gt_matched], minlength=num_classes)
    return label, tp, keep, npos


def breakdown(data: DetectionData, out: Outcome) -> dict:
    """{"ap", "ap_protocol", "errors": {type: {"count", "dAP"}}, "special": {"FalsePos", "FalseNeg"}: dAP,
    "per_class": {class: {type: count}}} of classified detections; dAP and ap are null when no class has ground
    truth."""
    valid = ~data.gt.difficult
    classes = np.unique(data.gt.label[valid])
    base = mean_ap(data, *_fixed(data, out, ""), classes)

    def delta(kind: str) -> float | None:
        return mean_ap(data, *_fixed(data, out, kind), classes) - base if len(classes) else None

    counts = {name: np.bincount(data.dets.label[out.error == code], minlength=len(data.class_names))
              for name, code in zip(ERROR_TYPES[:5], (CLS, LOC, BOTH, DUPE, BKG))}
    counts["Miss"] = np.bincount(data.gt.label[out.missed], minlength=len(data.class_names))
    return {"ap": base if len(classes) else None, "ap_protocol": AP_PROTOCOL,
            "errors": {name: {"count": int(c.sum()), "dAP": delta(name)} for name, c in counts.items()},
            "special": {kind: delta(kind) for kind in ("FalsePos", "FalseNeg")},
            "per_class": {cls: {name: int(c[k]) for name, c in counts.items()}
                          for k, cls in enumerate(data.class_names)}}
