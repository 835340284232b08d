"""Detection training throughput: cvtool's Trainer vs a plain loop written like torchvision's reference
`train_one_epoch` (same model, same data and augmentation, same DataLoader), measured in one run, alternating
rounds; prints images/s of both and the ratio (target >= 0.95).

    python benchmarks/detection_train.py [--model yolo] [--images 256] [--rounds 2] [overrides ...]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cvtool.commands import components as C
from cvtool.config import runner
from cvtool.engine.hooks import LoggerHook, LRSchedulerHook
from cvtool.engine.metrics_log import MetricsLogger
from cvtool.engine.schedule import build_scheduler
from cvtool.engine.trainer import Trainer
from cvtool.tasks.detection import label_offset


def setup(overrides: list[str]):
    cfg = runner.compose("train", ["task=detection", "hardware=cpu", *overrides])
    hardware = C.setup(cfg)
    task = C.task_from(cfg)
    dataset = task.open_split(cfg.dataset.train_split, C.transforms(cfg, "train_transforms"), skip_invalid=False,
                              seed=0, train=True)
    return cfg, hardware, task, C.limited(dataset, cfg.data.limit, 0)


def fresh(cfg, task, dataset):
    torch.manual_seed(0)
    model = task.build_model(C.plain(cfg.model), len(dataset.classes))
    return model, C.optimizer(cfg, model)


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


def cvtool_loop(cfg, hardware, task, dataset) -> float:
    """The Trainer with its default hooks (LR schedule, logging with progress bar), no validation."""
    model, optimizer = fresh(cfg, task, dataset)
    loader = C.loader(dataset, cfg, hardware, train=True)
    scheduler = build_scheduler(optimizer, C.plain(cfg.sched), len(loader), 1)
    trainer = Trainer(model, task, optimizer, scheduler, loader, hardware=hardware, epochs=1, grad_accum=1,
                      clip_grad_norm=cfg.trainer.clip_grad_norm, stop_after=None, logger=MetricsLogger(None, False),
                      checkpoint_meta={})
    trainer.register_hooks(lr=LRSchedulerHook(), logger=LoggerHook(cfg.trainer.log_every))
    start = time.perf_counter()
    trainer.fit()
    return len(loader) * cfg.data.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="yolo")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, hardware, task, dataset = setup([f"model={args.model}", f"data.limit={args.images}", *args.overrides])
    print(f"{args.model} on {dataset.source}, batch {cfg.data.batch_size}, {torch.get_num_threads()} threads")
    reference, ours = [], []
    for _ in range(args.rounds):
        reference.append(reference_loop(cfg, hardware, task, dataset))
        ours.append(cvtool_loop(cfg, hardware, task, dataset))
    ref, mine = statistics.median(reference), statistics.median(ours)
    print(f"  reference train_one_epoch loop: {ref:6.1f} img/s  ({', '.join(f'{v:.1f}' for v in reference)})")
    print(f"  cvtool Trainer                : {mine:6.1f} img/s  ({', '.join(f'{v:.1f}' for v in ours)})")
    print(f"  ratio cvtool/reference = {mine / ref:.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
