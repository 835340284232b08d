"""Evaluators under DDP: each rank feeds its strided shard of images; the metrics must equal one process's.
Run by torchrun from test_ddp.py; `evaluate_all(rank, world)` is also called there in a single process."""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from cvtool.metrics.classification import ClassificationEvaluator
from cvtool.metrics.coco import CocoEvaluator, coco_api
from cvtool.metrics.segmentation import SegmentationEvaluator
from cvtool.metrics.voc import Boxes, VOCEvaluator

IMAGES, CLASSES = 24, ["a", "b", "c"]


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    gt_image = rng.integers(0, IMAGES, 60)
    xy = rng.integers(0, 60, (60, 2))
    gt_box = np.concatenate([xy, xy + rng.integers(8, 30, (60, 2))], 1).astype(float)  # 0-based xyxy
    gt_label = rng.integers(0, 3, 60)
    outputs = []
    for i in range(IMAGES):
        mine = np.flatnonzero(gt_image == i)
        boxes = np.concatenate([gt_box[mine] + rng.normal(0, 2, (len(mine), 4)), rng.uniform(0, 60, (2, 4))])
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        outputs.append({"boxes": torch.tensor(boxes, dtype=torch.float32),
                        "scores": torch.tensor(rng.integers(0, 4, len(boxes)) / 4, dtype=torch.float32),  # ties
                        "labels": torch.tensor(np.concatenate([gt_label[mine], rng.integers(0, 3, 2)]))})
    gt = Boxes.make(gt_image, gt_label, gt_box + [1, 1, 0, 0], difficult=rng.random(60) < 0.1)
    coco = {"images": [{"id": i, "width": 100, "height": 100} for i in range(IMAGES)],
            "categories": [{"id": 2 * k + 1, "name": n} for k, n in enumerate(CLASSES)],
            "annotations": [{"id": j + 1, "image_id": int(gt_image[j]), "category_id": 2 * int(gt_label[j]) + 1,
                             "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
                            for j, (x0, y0, x1, y1) in enumerate(gt_box.tolist())]}
    masks = torch.tensor(np.where(rng.random((IMAGES, 6, 7)) < 0.1, 255, rng.integers(0, 5, (IMAGES, 6, 7))))
    seg_logits = torch.tensor(rng.normal(size=(IMAGES, 4, 6, 7)), dtype=torch.float32)
    logits = torch.tensor(rng.normal(size=(IMAGES, 6)), dtype=torch.float32)
    targets = torch.tensor(rng.integers(0, 6, IMAGES))
    return gt, outputs, coco, masks, seg_logits, logits, targets


def evaluate_all(rank: int, world: int) -> dict:
    gt, outputs, coco, masks, seg_logits, logits, targets = data()
    ids = [str(i) for i in range(IMAGES)]
    voc = VOCEvaluator(gt, ids, CLASSES)
    cocoeval = CocoEvaluator(coco_api(coco), [1, 3, 5], ["bbox"])
    seg, cls = SegmentationEvaluator(4, 255), ClassificationEvaluator(6)
    for i in range(rank, IMAGES, world):
        voc.process({"image_id": [ids[i]]}, [outputs[i]])
        cocoeval.process({"image_id": [i]}, [outputs[i]])
        seg.process({"mask": masks[i:i + 1]}, seg_logits[i:i + 1])
        cls.process({"target": targets[i:i + 1]}, logits[i:i + 1])
    return {"voc": voc.evaluate(), "coco": cocoeval.evaluate(), "seg": seg.evaluate(), "cls": cls.evaluate()}


if __name__ == "__main__":
    from cvtool.utils import distributed as dist

    dist.init("gloo")
    metrics = evaluate_all(dist.rank(), dist.world_size())
    if dist.is_main():
        with open(sys.argv[1], "w") as f:
            json.dump(metrics, f)
    dist.shutdown()
