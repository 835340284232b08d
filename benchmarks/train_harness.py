"""Shared harness of the per-task training benchmarks: cvtool's Trainer vs a plain reference loop over the same
model, data, augmentation and DataLoader, measured in one run in alternating rounds; prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from cvtool.commands import components as C
from cvtool.config import runner
from cvtool.engine.hooks import LoggerHook, LRSchedulerHook
from cvtool.engine.metrics_log import MetricsLogger
from cvtool.engine.schedule import build_scheduler
from cvtool.engine.trainer import Trainer


def setup(task_name: str, overrides: list[str]):
    cfg = runner.compose("train", [f"task={task_name}", "hardware=cpu", *overrides])
    hardware = C.setup(cfg)
    task = C.task_from(cfg)
    dataset = task.open_split(cfg.dataset.train_split, C.transforms(cfg, "train_transforms"), skip_invalid=False,
                              seed=0, train=True)
    return cfg, hardware, task, C.limited(dataset, cfg.data.limit, 0)


def fresh(cfg, task, dataset):
    """The same freshly initialised model and optimizer for both loops."""
    torch.manual_seed(0)
    model = C.to_device(task.build_model(C.plain(cfg.model), len(dataset.classes)), C.setup(cfg))
    return model, C.optimizer(cfg, model)


def cvtool_loop(cfg, hardware, task, dataset) -> float:
    """The Trainer with its default hooks (LR schedule, logging with progress bar), no validation."""
    model, optimizer = fresh(cfg, task, dataset)
    loader = C.loader(dataset, cfg, hardware, train=True)
    scheduler = build_scheduler(optimizer, C.plain(cfg.sched), len(loader), 1)
    trainer = Trainer(model, task, optimizer, scheduler, loader, hardware=hardware, epochs=1, grad_accum=1,
                      clip_grad_norm=cfg.trainer.clip_grad_norm, stop_after=None, logger=MetricsLogger(None),
                      checkpoint_meta={})
    trainer.register_hooks(lr=LRSchedulerHook(), logger=LoggerHook(cfg.trainer.log_every))
    start = time.perf_counter()
    trainer.fit()
    return len(loader) * cfg.data.batch_size / (time.perf_counter() - start)


def reference_loop(cfg, hardware, task, dataset, train_one_epoch: Callable) -> float:
    """Images/s of a reference `train_one_epoch(model, optimizer, loader, cfg, hardware)` (returning the images it
    saw) over the same fresh model and loader as the Trainer gets."""
    model, optimizer = fresh(cfg, task, dataset)
    loader = C.loader(dataset, cfg, hardware, train=True)
    loader.sampler.set_epoch(0)
    start = time.perf_counter()
    return train_one_epoch(model, optimizer, loader, cfg, hardware) / (time.perf_counter() - start)


def main(task_name: str, default_model: str, train_one_epoch: Callable, doc: str) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default=default_model)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg, hardware, task, dataset = setup(task_name, [f"model={args.model}", f"data.limit={args.images}",
                                                     *args.overrides])
    print(f"{args.model} on {dataset.source}, batch {cfg.data.batch_size}, {torch.get_num_threads()} threads")
    reference, ours = [], []
    for _ in range(args.rounds):
        reference.append(reference_loop(cfg, hardware, task, dataset, train_one_epoch))
        ours.append(cvtool_loop(cfg, hardware, task, dataset))
    ref, mine = statistics.median(reference), statistics.median(ours)
    print(f"  reference loop: {ref:6.1f} img/s  ({', '.join(f'{v:.1f}' for v in reference)})")
    print(f"  cvtool Trainer: {mine:6.1f} img/s  ({', '.join(f'{v:.1f}' for v in ours)})")
    print(f"  ratio cvtool/reference = {mine / ref:.3f}  (target >= 0.95)")
