"""Segmentation training throughput: cvtool's Trainer vs a plain loop written like torchvision's segmentation
reference `train_one_epoch` (same model, same data and joint augmentation, same DataLoader), measured in one run,
alternating rounds; prints images/s of both and the ratio (target >= 0.95).

    python benchmarks/segmentation_train.py [--model fcn8s] [--images 256] [--rounds 2] [overrides ...]
"""

from __future__ import annotations

import torch
from torch import nn
from train_harness import main

from cvtool.engine.inference import autocast


def train_one_epoch(model, optimizer, loader, cfg, hardware, scheduler=None) -> int:
    """torchvision references/segmentation/train.py: criterion = CE(out) + 0.5 CE(aux), ignore_index 255;
    returns images seen."""
    mean_t = torch.tensor(cfg.dataset.mean).view(1, -1, 1, 1)
    std_t = torch.tensor(cfg.dataset.std).view(1, -1, 1, 1)
    model.train()
    images_seen = 0
    for images, masks, _ in loader:
        images = (images.float() / 255 - mean_t) / std_t
        with autocast(hardware):
            output = model(images)
        output = output if isinstance(output, dict) else {"out": output}
        losses = {name: nn.functional.cross_entropy(x.float(), masks, ignore_index=255) for name, x in output.items()}
        loss = losses["out"] + 0.5 * losses["aux"] if "aux" in losses else losses["out"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        images_seen += len(images)
    return images_seen


if __name__ == "__main__":
    main("segmentation", "fcn8s", train_one_epoch, __doc__)
