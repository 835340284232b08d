"""Semantic segmentation metrics from one confusion matrix accumulated over the whole split.

Ground-truth pixels equal to the ignore index (255) or outside [0, num_classes) are left out. A class absent from
both ground truth and prediction (empty union) has IoU null and is skipped by the means; a class predicted but
absent from the ground truth has IoU 0. Under DDP the matrices of all ranks are summed before any ratio.
"""

from __future__ import annotations

import numpy as np

from cvtool.utils import distributed as dist

from .base import mean_defined, ratio, to_numpy


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int | None) -> np.ndarray:
    """[gt class, predicted class] pixel counts; predictions must lie in [0, num_classes). Ignored pixels go to an
    extra bin that is dropped (one pass, no masked copies: ~10x faster than boolean indexing)."""
    gt, pred = gt.reshape(-1), pred.reshape(-1)
    n = num_classes
    index = gt.astype(np.intp) * n
    index += pred
    invalid = (gt >= n) | (gt < 0) if gt.dtype.kind == "i" else gt >= n
    if ignore_index is not None and 0 <= ignore_index < n:
        invalid |= gt == ignore_index
    index[invalid] = n * n
    return np.bincount(index, minlength=n * n + 1)[: n * n].reshape(n, n)


def segmentation_metrics(confusion: np.ndarray) -> dict:
    """mIoU, pixel accuracy, mean class accuracy, frequency-weighted IoU and per-class IoU/accuracy."""
    confusion = confusion.astype(np.float64)
    tp = np.diag(confusion)
    gt_pixels, pred_pixels = confusion.sum(axis=1), confusion.sum(axis=0)
    union = gt_pixels + pred_pixels - tp
    total = gt_pixels.sum()
    iou = [ratio(t, u) for t, u in zip(tp, union)]
    acc = [ratio(t, g) for t, g in zip(tp, gt_pixels)]
    present = gt_pixels > 0  # only classes present in the ground truth have a weight (and a defined IoU)
    fw_iou = float((gt_pixels[present] / total * (tp[present] / union[present])).sum()) if total else None
    return {"mIoU": mean_defined(iou), "pixel_acc": ratio(tp.sum(), total), "mean_class_acc": mean_defined(acc),
            "fwIoU": fw_iou, "per_class_iou": iou, "per_class_acc": acc,
            "num_pixels": int(total)}


def constant_prediction_metrics(confusion: np.ndarray) -> dict:
    """The metrics of predicting the most frequent ground-truth class (usually background) for every pixel: the
    best input-blind prediction for each mean (mIoU = that class's pixel share / the classes present)."""
    gt_pixels = confusion.sum(axis=1)
    constant = np.zeros_like(confusion)
    constant[:, int(gt_pixels.argmax())] = gt_pixels
    return segmentation_metrics(constant)


class SegmentationEvaluator:
    """`process(inputs, outputs)` with inputs["mask"] (N, H, W) class indices and outputs either label maps
    (N, H, W), logits (N, C, H, W) (argmax over C), or one {"labels": (h, w)} per image, compared with the
    top-left (h, w) of its (padded) mask."""

    def __init__(self, num_classes: int, ignore_index: int | None = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def process(self, inputs: dict, outputs) -> None:
        if isinstance(outputs, list):
            masks = to_numpy(inputs["mask"])
            for mask, output in zip(masks, outputs):
                pred = to_numpy(output["labels"])
                self.add(mask[:pred.shape[0], :pred.shape[1]], pred)
            return
        if hasattr(outputs, "argmax") and np.ndim(outputs) == 4:
            outputs = outputs.argmax(1)
        self.add(to_numpy(inputs["mask"]), to_numpy(outputs))

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self.confusion += confusion_matrix(gt, pred, self.num_classes, self.ignore_index)

    def protocol(self) -> str:
        void = f"GT pixels = {self.ignore_index} ignored, " if self.ignore_index is not None else ""
        return (f"one confusion matrix over the whole split ({self.num_classes} classes), {void}classes absent from "
                "GT and prediction → null IoU, skipped by the means")

    def evaluate(self) -> dict:
        self.confusion = dist.all_reduce_sum(self.confusion)
        return segmentation_metrics(self.confusion)
