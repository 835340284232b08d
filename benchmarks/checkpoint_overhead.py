"""What a mid-epoch checkpoint (`trainer.checkpoint_every` / `checkpoint_interval_s`) costs: the time to write
last.pt (model, AdamW state, the rest of the training state; atomically, fsync'ed) against one training step of
the same model, measured in one run, for ResNet-50 (224 px) and the default classifier (shapes_cnn, 64 px).
Prints the checkpoint size, both times, and the overhead at a few checkpoint intervals.

    python benchmarks/checkpoint_overhead.py [--batch 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cvtool.engine.checkpoint import save_checkpoint
from cvtool.engine.hardware import machine_summary
from cvtool.models.registry import create_model
from cvtool.utils.seeding import rng_state

MODELS = {"resnet50": (1000, 224), "shapes_cnn": (5, 64)}


def measure(name: str, batch: int, repeats: int, directory: Path) -> dict:
    classes, size = MODELS[name]
    model = create_model(name, num_classes=classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    images, labels = torch.randn(batch, 3, size, size), torch.randint(0, classes, (batch,))

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # the optimizer's state exists from here on, as in a checkpoint taken mid-run
    step_times, save_times = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        path = save_checkpoint(directory / f"{name}.pt", {"model": model.state_dict(),
                                                          "optimizer": optimizer.state_dict(), "rng": rng_state()})
        save_times.append(time.perf_counter() - t)
    return {"model": name, "size_mb": path.stat().st_size / 2**20, "step_s": statistics.median(step_times),
            "save_s": statistics.median(save_times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {machine_summary()}; batch {args.batch}, median of {args.repeats}")
    print(f"{'model':<12}{'last.pt':>10}{'step':>10}{'save':>10}{'save/step':>11}   overhead every 100 / 500 steps")
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        for name in MODELS:
            r = measure(name, args.batch, args.repeats, Path(tmp))
            ratio = r["save_s"] / r["step_s"]
            print(f"{r['model']:<12}{r['size_mb']:>8.1f}MB{r['step_s']:>9.3f}s{r['save_s']:>9.3f}s{ratio:>10.2f}x"
                  f"   {ratio / 100:.2%} / {ratio / 500:.2%}")


if __name__ == "__main__":
    main()
