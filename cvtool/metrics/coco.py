"""COCO detection/instance-segmentation metrics through pycocotools' COCOeval (or faster-coco-eval, which gives
the same numbers faster): the 12 standard numbers plus per-category AP, over every image of the ground truth.

For segm, a result's `bbox` is removed before evaluation so its area (for the small/medium/large ranges) is the
mask area, as for the ground truth; for bbox, `segmentation` is removed so the area is the box area.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Any

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.utils import distributed as dist

from .base import to_numpy

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")  # COCOeval's order
IOU_TYPES = ("bbox", "segm")
RESULT_KEY = {"bbox": "bbox", "segm": "segmentation"}
BACKENDS = ("pycocotools", "faster_coco_eval")


def _engine(backend: str):
    """(COCO class, COCOeval factory) of the chosen implementation."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        return COCO, COCOeval
    if backend == "faster_coco_eval":
        try:
            from faster_coco_eval import COCO, COCOeval_faster
        except ImportError as err:
            raise CvtoolError("backend=faster_coco_eval is not installed", where="backend",
                              fix="pip install faster-coco-eval, or use backend=pycocotools") from err
        return COCO, lambda gt, dt, iou_type: COCOeval_faster(gt, dt, iou_type, print_function=lambda *a: None)
    raise CvtoolError(f"unknown COCO backend {backend!r}", where="backend", fix=f"use one of {', '.join(BACKENDS)}")


def quiet():
    """pycocotools prints progress to stdout; keep the console for cvtool's own table."""
    return contextlib.redirect_stdout(io.StringIO())


def coco_api(dataset: dict, backend: str = "pycocotools"):
    """A COCO index over an already loaded (and checked) instances dict."""
    coco_cls, _ = _engine(backend)
    with quiet():
        api = coco_cls()
        api.dataset = dataset
        api.createIndex()
    return api


def check_iou_types(results: list[dict], iou_type: str | None, where: str) -> list[str]:
    """[iou_type] when given (every result must carry its key), else every type all results carry (bbox for an
    empty list)."""
    if not iou_type:
        found = [t for t in IOU_TYPES if all(RESULT_KEY[t] in r for r in results)]
        if results and not found:
            raise CvtoolError("results mix entries with only 'bbox' and only 'segmentation'", where=where,
                              fix="give every result the same keys, or choose iou_type=bbox|segm")
        return found if results else ["bbox"]
    if iou_type not in IOU_TYPES:
        raise CvtoolError(f"unknown iou_type {iou_type!r}", where="iou_type", fix="use iou_type=bbox or segm")
    lacking = next((i for i, r in enumerate(results) if RESULT_KEY[iou_type] not in r), None)
    if lacking is not None:
        raise CvtoolError(f"result lacks '{RESULT_KEY[iou_type]}' needed for iou_type={iou_type}",
                          where=f"{where} [{lacking}]", fix="evaluate the iou_type the results carry")
    return [iou_type]


def _for_type(results: list[dict], iou_type: str) -> list[dict]:
    """Copies without the keys that would make loadRes read them as another type (it checks bbox, then
    segmentation, then keypoints) and so take their area from the wrong geometry."""
    drop = {"bbox": ("segmentation",), "segm": ("bbox",), "keypoints": ("bbox", "segmentation")}[iou_type]
    return [{k: copy.copy(v) for k, v in r.items() if k not in drop} for r in results]


def category_ap(precision: np.ndarray, k: int) -> float | None:
    """AP of category k at all areas, the most detections (100; keypoints: 20): mean precision over IoU (OKS) and
    recall thresholds."""
    values = precision[:, :, k, 0, -1]
    values = values[values > -1]
    return float(values.mean()) if values.size else None


def coco_metrics(gt, results: list[dict], iou_types: list[str], backend: str = "pycocotools",
                 curves: dict | None = None, sigmas: list[float] | None = None) -> dict:
    """{iou_type: {AP, AP50, ..., ARl, per_category_AP}} with -1 (undefined) reported as null. `curves`, when
    given, receives each category's precision at COCO's 101 recall points at IoU 0.5 (first iou type).
    iou_type "keypoints" scores OKS with the per-keypoint `sigmas` (COCOeval's kpt_oks_sigmas)."""
    _, evaluator_cls = _engine(backend)
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    metrics = {}
    for iou_type in iou_types:
        with quiet():
            detections = gt.loadRes(_for_type(results, iou_type)) if results else _empty_results(gt, backend)
            evaluator = evaluator_cls(gt, detections, iou_type)
            if iou_type == "keypoints":
                evaluator.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        stat_names = KEYPOINT_STAT_NAMES if iou_type == "keypoints" else STAT_NAMES
        stats = {name: (float(v) if v > -1 else None) for name, v in zip(stat_names, evaluator.stats)}
        precision = np.asarray(evaluator.eval["precision"])
        stats["per_category_AP"] = {names[c]: category_ap(precision, k)
                                    for k, c in enumerate(evaluator.params.catIds)}
        if curves is not None and not curves:
            recall = np.asarray(evaluator.params.recThrs)
            overlap = "OKS" if iou_type == "keypoints" else "IoU"
            curves.update({f"{names[c]} ({overlap} 0.5)": (recall, precision[0, :, k, 0, -1])
                           for k, c in enumerate(evaluator.params.catIds) if precision[0, 0, k, 0, -1] > -1})
        metrics[iou_type] = stats
    return metrics


def _empty_results(gt, backend: str):
    return coco_api({"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []},
                    backend)


def model_results(image_id: Any, output: dict, category_ids: list[int]) -> list[dict]:
    """COCO results of one image from a model's output (0-based xyxy boxes, 0-based labels, optional masks of
    probabilities (N, 1, H, W) thresholded at 0.5 into RLE)."""
    from pycocotools import mask as mask_utils

    boxes = to_numpy(output["boxes"], np.float64).reshape(-1, 4)
    scores = to_numpy(output["scores"], np.float64).reshape(-1)
    labels = to_numpy(output["labels"], np.int64).reshape(-1)
    results = [{"image_id": image_id, "category_id": int(category_ids[label]), "score": float(score),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
               for (x1, y1, x2, y2), score, label in zip(boxes, scores, labels)]
    if "masks" in output:
        masks = to_numpy(output["masks"]).reshape(len(results), *np.shape(output["masks"])[-2:]) > 0.5
        for result, rle in zip(results, mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0), np.uint8))):
            result["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
    return results


class CocoEvaluator:
    """Evaluator for detection models on COCO ground truth: `process(inputs, outputs)` with inputs["image_id"]
    (COCO image ids) and per-image outputs; results are gathered over DDP ranks and evaluated together."""

    def __init__(self, gt, category_ids: list[int], iou_types: list[str], backend: str = "pycocotools"):
        self.gt, self.category_ids, self.iou_types, self.backend = gt, category_ids, iou_types, backend
        self.reset()

    def reset(self) -> None:
        self.results: list[dict] = []
        self.curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # category -> (recall, precision), for plots

    def process(self, inputs: dict, outputs: list[dict]) -> None:
        for image_id, output in zip(inputs["image_id"], outputs, strict=True):
            self.results.extend(self.image_results(image_id, output))

    def image_results(self, image_id: Any, output: dict) -> list[dict]:
        """The COCO results of one image's model output."""
        return model_results(image_id, output, self.category_ids)

    def protocol(self) -> str:
        return (f"COCO AP@[.50:.05:.95], AP50, AP75, AR@1/10/100, small/medium/large ({'+'.join(self.iou_types)}) "
                f"by {self.backend} COCOeval over all {len(self.gt.getImgIds())} ground-truth images, crowd regions "
                f"ignored{', segm areas from masks' if 'segm' in self.iou_types else ''}")

    def evaluate(self) -> dict:
        results = [r for part in dist.all_gather_objects(self.results) for r in part]
        return coco_metrics(self.gt, results, self.iou_types, self.backend, self.curves)
