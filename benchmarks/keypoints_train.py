"""Keypoints training throughput: cvtool's Trainer vs a plain loop written like torchvision's reference
`train_one_epoch` (same model, same data, crops and augmentation, same DataLoader), measured in one run, alternating
rounds; prints images/s (person crops/s for top-down models) of both and the ratio (target >= 0.95).

    python benchmarks/keypoints_train.py [--model pose_heatmap|keypoint_rcnn] [--images 256] [overrides ...]
"""

from __future__ import annotations

import torch
from train_harness import main

from cvtool.engine.inference import autocast
from cvtool.tasks.detection import label_offset


def train_one_epoch(model, optimizer, loader, cfg, hardware, scheduler=None) -> int:
    """Keypoint R-CNN: torchvision's detection reference `train_one_epoch` (its loss dict summed). Heatmap
    networks: the same loop over person crops with the MSE of every stack's heatmaps (joint weights applied), as
    the published top-down code trains them. Returns the items seen (images or crops)."""
    model.train()
    seen = 0
    for batch in loader:
        loss = _image_loss(model, batch, hardware) if cfg.model.name == "keypoint_rcnn" else \
            _crop_loss(model, batch, cfg, hardware)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        seen += len(batch[0])
    return seen


def _image_loss(model, batch, hardware):
    images, targets = batch
    offset = label_offset(model)
    images = [image.float() / 255 for image in images]
    targets = [{"boxes": t["boxes"], "labels": t["labels"] + offset, "keypoints": t["keypoints"]} for t in targets]
    with autocast(hardware):
        return sum(model(images, targets).values())


def _crop_loss(model, batch, cfg, hardware):
    crops, heatmaps, weights, _ = batch
    mean = torch.tensor(cfg.dataset.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(cfg.dataset.std).view(1, -1, 1, 1) * 255
    with autocast(hardware):
        stacks = model((crops.float() - mean) / std)
    return sum(0.5 * (((h.float() - heatmaps) * weights[..., None, None]) ** 2).mean() for h in stacks)


if __name__ == "__main__":
    main("keypoints", "pose_heatmap", train_one_epoch, __doc__)
