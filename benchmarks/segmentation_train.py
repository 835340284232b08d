"""Segmentation training throughput: cvtool's Trainer vs a plain loop written like torchvision's segmentation
reference `train_one_epoch` (same model, same data and joint augmentation, same DataLoader), measured in one run,
alternating rounds; prints images/s of both and the ratio (target >= 0.95).

    python benchmarks/segmentation_train.py [--model fcn8s] [--images 256] [--rounds 2] [overrides ...]
"""

from __future__ import annotations

import time

import torch
from torch import nn
from train_harness import fresh, main

from cvtool.commands import components as C
from cvtool.engine.inference import autocast


def train_one_epoch(model, optimizer, loader, mean: list[float], std: list[float], hardware, scheduler=None) -> int:
    """torchvision references/segmentation/train.py: criterion = CE(out) + 0.5 CE(aux), ignore_index 255;
    returns images seen."""
    mean_t, std_t = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
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


def reference_loop(cfg, hardware, task, dataset) -> float:
    model, optimizer = fresh(cfg, task, dataset)
    loader = C.loader(dataset, cfg, hardware, train=True)
    loader.sampler.set_epoch(0)
    start = time.perf_counter()
    images_seen = train_one_epoch(model, optimizer, loader, cfg.dataset.mean, cfg.dataset.std, hardware)
    return images_seen / (time.perf_counter() - start)


if __name__ == "__main__":
    main("segmentation", "fcn8s", reference_loop, __doc__)
