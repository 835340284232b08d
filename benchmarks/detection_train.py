"""Detection training throughput: cvtool's Trainer vs a plain loop written like torchvision's reference
`train_one_epoch` (same model, same data and augmentation, same DataLoader), measured in one run, alternating
rounds; prints images/s of both and the ratio (target >= 0.95).

    python benchmarks/detection_train.py [--model yolo] [--images 256] [--rounds 2] [overrides ...]
"""

from __future__ import annotations

import time

from train_harness import fresh, main

from cvtool.commands import components as C
from cvtool.tasks.detection import label_offset


def reference_loop(cfg, hardware, task, dataset) -> float:
    """torchvision references/detection/engine.py train_one_epoch, minus its logging."""
    model, optimizer = fresh(cfg, task, dataset)
    loader = C.loader(dataset, cfg, hardware, train=True)
    loader.sampler.set_epoch(0)
    offset = label_offset(model)
    model.train()
    start, images_seen = time.perf_counter(), 0
    for images, targets in loader:
        images = [image.float() / 255 for image in images]
        targets = [{"boxes": t["boxes"], "labels": t["labels"] + offset} for t in targets]
        loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        images_seen += len(images)
    return images_seen / (time.perf_counter() - start)


if __name__ == "__main__":
    main("detection", "yolo", reference_loop, __doc__)
