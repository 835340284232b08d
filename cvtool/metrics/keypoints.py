"""Keypoint metrics: COCO OKS-AP through COCOeval('keypoints') with the dataset's sigmas, and PCK per keypoint.

OKS of a prediction and a ground-truth instance (pycocotools): mean over the instance's labelled points (v > 0) of
exp(-d^2 / (2 s^2 (2 sigma_k)^2)), d the point distance in pixels, s^2 the instance's `area`.

PCK@t: predictions are matched to ground-truth instances of the same image and category as COCOeval matches
(highest score first, at most 20 per image and category, each taking the not yet matched instance of highest OKS;
no minimum OKS). Only non-crowd instances with a labelled point take part. A labelled point is correct when its
matched prediction's point lies within t * max(box width, box height) of it (the instance's `bbox`); the points of
an instance no prediction matched are wrong. PCK of keypoint k = correct / labelled over the split (null when no
instance labels k); the mean is over the keypoints with a value.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.utils import distributed as dist

from .base import mean_defined, ratio, to_numpy
from .coco import CocoEvaluator, coco_api, coco_metrics

MAX_DETS = 20  # COCOeval's detections per image and category for keypoints


def keypoint_results(image_id: Any, output: dict, category_ids: list[int]) -> list[dict]:
    """COCO keypoint results of one image from a model's output: keypoints (N, K, 3) [x, y, per-keypoint score]
    in original image pixels, scores (N,), labels (N,) 0-based category indices."""
    scores = to_numpy(output["scores"], np.float64).reshape(-1)
    labels = to_numpy(output["labels"], np.int64).reshape(-1)
    points = to_numpy(output["keypoints"], np.float64)
    points = points.reshape(len(scores), points.size // max(len(scores), 1))  # (N, 3K); also for N = 0
    return [{"image_id": image_id, "category_id": int(category_ids[label]), "keypoints": p.tolist(),
             "score": float(score)} for p, score, label in zip(points, scores, labels)]


def check_sigmas(gt: dict, sigmas: Any) -> np.ndarray:
    """The sigmas as an array, one per keypoint of every category that names keypoints."""
    if sigmas is None:
        raise CvtoolError("the dataset has no keypoint sigmas", where="dataset.sigmas",
                          fix="set dataset.sigmas to one OKS sigma per keypoint (COCO's 17 values for COCO persons)")
    sigmas = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if not any(c.get("keypoints") for c in gt["categories"]):
        raise CvtoolError("no category of the ground truth names keypoints", where="the annotation file's categories",
                          fix="use a COCO keypoints file: categories with 'keypoints' names and a 'skeleton'")
    for i, category in enumerate(gt["categories"]):
        count = len(category.get("keypoints") or [])
        if count and count != len(sigmas):
            raise CvtoolError(f"categories[{i}] ({category['name']!r}) has {count} keypoints but dataset.sigmas has "
                              f"{len(sigmas)} values", where="dataset.sigmas",
                              fix="give one sigma per keypoint, in the order of the category's keypoint names")
    if not (np.isfinite(sigmas).all() and (sigmas > 0).all()):
        raise CvtoolError(f"dataset.sigmas {sigmas.tolist()} are not all positive numbers", where="dataset.sigmas",
                          fix="OKS sigmas are positive fractions of the object scale (COCO's: 0.025 to 0.107)")
    return sigmas


def oks(gt_points: np.ndarray, area: float, predicted: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """OKS (D,) of predictions (D, K, >=2) with one instance (K, 3) that labels at least one point."""
    labelled = gt_points[:, 2] > 0
    d2 = ((predicted[:, labelled, :2] - gt_points[labelled, :2]) ** 2).sum(-1)
    e = d2 / (2 * (2 * sigmas[labelled]) ** 2 * (area + np.spacing(1)))
    return np.exp(-e).mean(axis=1)


def _instances(gt: dict) -> dict[tuple, list[dict]]:
    groups = defaultdict(list)
    for ann in gt["annotations"]:
        points = np.asarray(ann.get("keypoints") or [], np.float64).reshape(-1, 3)
        if not ann["iscrowd"] and (points[:, 2] > 0).any():
            groups[ann["image_id"], ann["category_id"]].append(ann)
    return groups


def _predictions(results: list[dict]) -> dict[tuple, np.ndarray]:
    """(image, category) -> predicted points (D, K, 3), highest score first (stable), at most MAX_DETS."""
    groups = defaultdict(list)
    for r in results:
        groups[r["image_id"], r["category_id"]].append(r)
    out = {}
    for key, rs in groups.items():
        order = np.argsort([-r["score"] for r in rs], kind="mergesort")[:MAX_DETS]
        out[key] = np.asarray([rs[i]["keypoints"] for i in order], np.float64).reshape(len(order), -1, 3)
    return out


def pck_counts(gt: dict, results: list[dict], sigmas: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(correct, labelled) per keypoint, (K,) each, over the ground truth's instances (see the module docstring)."""
    correct, labelled = np.zeros(len(sigmas)), np.zeros(len(sigmas))
    predictions = _predictions(results)
    for key, anns in _instances(gt).items():
        points = np.asarray([a["keypoints"] for a in anns], np.float64).reshape(len(anns), -1, 3)
        labelled += (points[..., 2] > 0).sum(0)
        predicted = predictions.get(key)
        if predicted is None:
            continue
        overlap = np.stack([oks(p, a["area"], predicted, sigmas) for p, a in zip(points, anns)], axis=1)  # (D, G)
        taken = np.zeros(len(anns), bool)
        for d in range(min(len(predicted), len(anns))):
            g = int(np.argmax(np.where(taken, -1.0, overlap[d])))
            taken[g] = True
            scale = threshold * max(anns[g]["bbox"][2], anns[g]["bbox"][3])
            distance = np.linalg.norm(predicted[d, :, :2] - points[g, :, :2], axis=-1)
            correct += (points[g, :, 2] > 0) & (distance <= scale)
    return correct, labelled


def pck_metrics(correct: np.ndarray, labelled: np.ndarray, threshold: float, names: list[str]) -> dict:
    """{"threshold", "mean", "per_keypoint": {name: PCK | None}} from per-keypoint counts."""
    per_keypoint = {name: ratio(c, n) for name, c, n in zip(names, correct, labelled, strict=True)}
    return {"threshold": float(threshold), "mean": mean_defined(list(per_keypoint.values())),
            "per_keypoint": per_keypoint}


class KeypointEvaluator(CocoEvaluator):
    """Evaluator for keypoint models on a COCO keypoints ground truth (a loaded dict): `process(inputs, outputs)` with
    inputs["image_id"] (COCO image ids) and per-image outputs (see `keypoint_results`); results are gathered over
    DDP ranks, then scored by COCOeval (OKS-AP) and PCK."""

    def __init__(self, gt: dict, sigmas: Any, pck_threshold: float, keypoint_names: list[str],
                 backend: str = "pycocotools"):
        self.sigmas = check_sigmas(gt, sigmas)
        if len(keypoint_names) != len(self.sigmas):
            raise ValueError(f"{len(keypoint_names)} keypoint names for {len(self.sigmas)} sigmas")
        self.pck_threshold, self.keypoint_names = pck_threshold, keypoint_names
        super().__init__(coco_api(gt, backend), [c["id"] for c in sorted(gt["categories"], key=lambda c: c["id"])],
                         ["keypoints"], backend)  # the dict stays reachable as self.gt.dataset

    def image_results(self, image_id: Any, output: dict) -> list[dict]:
        return keypoint_results(image_id, output, self.category_ids)

    def protocol(self) -> str:
        from pycocotools.cocoeval import Params

        coco = np.array_equal(self.sigmas, Params("keypoints").kpt_oks_sigmas)
        source = "COCO's 17 person sigmas" if coco else f"{len(self.sigmas)} sigmas of dataset.sigmas"
        return (f"COCO OKS-AP@[.50:.05:.95], AP50, AP75, AR, medium/large (keypoints) by {self.backend} COCOeval, "
                f"maxDets {MAX_DETS}, {source}, over all {len(self.gt.getImgIds())} ground-truth images, crowd and "
                f"unlabelled instances ignored; PCK@{self.pck_threshold:g} x max(box w, h) on OKS-matched instances")

    def evaluate(self) -> dict:
        results = [r for part in dist.all_gather_objects(self.results) for r in part]
        metrics = coco_metrics(self.gt, results, ["keypoints"], self.backend, self.curves, self.sigmas.tolist())
        correct, labelled = pck_counts(self.gt.dataset, results, self.sigmas, self.pck_threshold)
        metrics["pck"] = pck_metrics(correct, labelled, self.pck_threshold, self.keypoint_names)
        return metrics
