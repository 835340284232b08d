"""Detection training throughput: cvtool's Trainer vs a plain loop written like torchvision's reference
`train_one_epoch` (same model, same data and augmentation, same DataLoader), measured in one run, alternating
rounds; prints images/s of both and the ratio (target >= 0.95).

    python benchmarks/detection_train.py [--model yolo] [--images 256] [--rounds 2] [overrides ...]
"""

from __future__ import annotations

from train_harness import main

from cvtool.engine.inference import autocast
from cvtool.tasks.detection import label_offset


def train_one_epoch(model, optimizer, loader, cfg, hardware, scheduler=None) -> int:
    """torchvision references/detection/engine.py train_one_epoch, minus its logging; returns images seen."""
    offset = label_offset(model)
    model.train()
    images_seen = 0
    for images, targets in loader:
        images = [image.float() / 255 for image in images]
        targets = [{"boxes": t["boxes"], "labels": t["labels"] + offset} for t in targets]
        with autocast(hardware):
            loss_dict = model(images, targets)
        losses = sum(loss for loss in loss_dict.values())
        optimizer.zero_grad()
        losses.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        images_seen += len(images)
    return images_seen


if __name__ == "__main__":
    main("detection", "yolo", train_one_epoch, __doc__)
