"""Engine overhead: the Trainer's steps/s vs a bare hand-written PyTorch loop (same model, same in-memory
batches, resnet18 at 32x32, batch 128, CPU), measured in one run and printed as a ratio (target >= 0.95).

Also: DataLoader throughput on the shapes ImageFolder (default workers, default augmentation) vs the default
model's training rate, to show the input pipeline is not the bottleneck.

    python benchmarks/engine_overhead.py [--steps 15] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cvtool.commands import components as C
from cvtool.config import runner
from cvtool.data.samplers import ResumableSampler
from cvtool.engine.hardware import resolve_hardware
from cvtool.engine.hooks import LoggerHook, LRSchedulerHook
from cvtool.engine.metrics_log import MetricsLogger
from cvtool.engine.schedule import build_scheduler
from cvtool.engine.trainer import Trainer
from cvtool.models import create_model
from cvtool.tasks.classification import ClassificationTask

BATCH, SIZE = 128, 32
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
SCHED = {"name": "cosine", "warmup_epochs": 0.0, "warmup_start_ratio": 0.1, "min_lr_ratio": 0.0}


def cpu_hardware():
    return resolve_hardware(C.plain(runner.compose("train", ["hardware=cpu", "hardware.channels_last=false"]).hardware))


def make_loader(steps: int) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (steps * BATCH, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (steps * BATCH,), generator=g)
    dataset = torch.utils.data.TensorDataset(images, labels)
    sampler = ResumableSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=0)
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=sampler, drop_last=True)


def new_model_and_optimizer():
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10, small_input=True)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def bare_loop(loader) -> float:
    """What a user would write by hand: the same preprocessing, forward, loss, backward, step."""
    model, optimizer = new_model_and_optimizer()
    scheduler = build_scheduler(optimizer, SCHED, len(loader), 1)
    mean = torch.tensor(MEAN).view(1, -1, 1, 1) * 255
    std = torch.tensor(STD).view(1, -1, 1, 1) * 255
    model.train()
    loader.sampler.set_epoch(0)
    start = time.perf_counter()
    for images, labels in loader:
        images = (images.float() - mean) / std
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
    return len(loader) / (time.perf_counter() - start)


def trainer_loop(loader, run_dir: Path) -> float:
    model, optimizer = new_model_and_optimizer()
    task = ClassificationTask({"label_smoothing": 0.0, "topk": 5}, {"mean": MEAN, "std": STD})
    trainer = Trainer(model, task, optimizer, build_scheduler(optimizer, SCHED, len(loader), 1), loader,
                      hardware=cpu_hardware(), epochs=1, grad_accum=1, clip_grad_norm=None, stop_after=None,
                      logger=MetricsLogger(run_dir), checkpoint_meta={})
    trainer.register_hooks(logger=LoggerHook(log_every=20), lr=LRSchedulerHook())
    start = time.perf_counter()
    trainer.fit()
    return len(loader) / (time.perf_counter() - start)


def engine_overhead(steps: int, rounds: int) -> None:
    loader = make_loader(steps)
    bare_loop(make_loader(2)), trainer_loop(make_loader(2), Path(tempfile.mkdtemp()))  # warm-up
    bare, ours = [], []
    for _ in range(rounds):  # interleaved, so drifts of the machine hit both alike
        bare.append(bare_loop(loader))
        ours.append(trainer_loop(loader, Path(tempfile.mkdtemp())))
    b, t = statistics.median(bare), statistics.median(ours)
    print(f"resnet18 32x32 batch {BATCH} CPU ({torch.get_num_threads()} threads), {steps} steps x {rounds} rounds")
    print(f"  bare loop : {b:.3f} steps/s   ({', '.join(f'{x:.3f}' for x in bare)})")
    print(f"  Trainer   : {t:.3f} steps/s   ({', '.join(f'{x:.3f}' for x in ours)})")
    print(f"  ratio Trainer/bare = {t / b:.3f}  (target >= 0.95)")


def input_pipeline(batches: int) -> None:
    """Default shapes config: training img/s fed by the real DataLoader vs on one batch already in memory."""
    cfg = runner.compose("train", [])
    hardware = resolve_hardware(C.plain(cfg.hardware))
    task = C.task_from(cfg)
    dataset = task.open_split("train", C.transforms(cfg, "train_transforms"), skip_invalid=False, seed=0)
    loader = C.loader(dataset, cfg, hardware, train=True)
    model = C.to_device(task.build_model(C.plain(cfg.model), len(dataset.classes)), hardware)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(batch) -> int:
        batch = task.preprocess(batch, hardware)
        task.training_step(model, batch)["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        return task.batch_size(batch)

    loader.sampler.set_epoch(0)
    batches_seen = list(itertools.islice(loader, 2))
    for batch in batches_seen:
        step(batch)  # warm-up
    start, seen = time.perf_counter(), 0
    for batch in itertools.islice(loader, batches):
        seen += step(batch)
    fed = seen / (time.perf_counter() - start)
    start = time.perf_counter()
    for _ in range(batches):
        step(batches_seen[0])
    cached = batches * task.batch_size(task.preprocess(batches_seen[0], hardware)) / (time.perf_counter() - start)
    start = time.perf_counter()
    loaded = sum(len(b[1]) for b in itertools.islice(loader, batches)) / (time.perf_counter() - start)
    print(f"input pipeline ({dataset.source}; workers={cfg.data.workers}, batch {cfg.data.batch_size}):")
    print(f"  loader alone {loaded:.0f} img/s; {cfg.model.name} training fed by the loader {fed:.0f} img/s, "
          f"on a batch in memory {cached:.0f} img/s")
    print(f"  ratio fed/in-memory = {fed / cached:.3f}  (~1: the input pipeline is not the bottleneck)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--loader-batches", type=int, default=30)
    args = parser.parse_args()
    engine_overhead(args.steps, args.rounds)
    input_pipeline(args.loader_batches)
