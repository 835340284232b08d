"""Segmentation quality in one time budget: `cvtool train task=segmentation model=unet` (the dataset's recipe) vs a
textbook plain loop over the same U-Net and data (AdamW at a constant lr, cross-entropy with void ignored, random
horizontal flips, batch 8, no auxiliary head, no Dice), given the seconds cvtool's run spent training. Prints the
val mIoU of both (the plain loop's best epoch) and their ratio.

    python benchmarks/segmentation_quality.py [--lr 1e-3] [--depth 3] [overrides for both ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cvtool.commands import components as C
from cvtool.config import runner


def cvtool_run(overrides: list[str]) -> dict:
    """`cvtool train` in a subprocess, as a user runs it; its metrics.json."""
    with tempfile.TemporaryDirectory() as runs:
        subprocess.run([sys.executable, "-m", "cvtool", "train", "task=segmentation", "model=unet",
                        f"paths.runs={runs}", *overrides], check=True, stdout=subprocess.DEVNULL)
        return json.loads(next(Path(runs).rglob("metrics.json")).read_text())


def miou(model, images, masks, hardware, num_classes: int, ignore: int) -> float:
    """mIoU over the whole split from one confusion matrix (void pixels left out)."""
    model.eval()
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.long)
    with torch.no_grad(), torch.autocast("cpu", hardware.amp_dtype or torch.float32,
                                         enabled=hardware.amp_dtype is not None):
        for i in range(0, len(images), 50):
            pred = model(images[i:i + 50]).argmax(1)
            truth = masks[i:i + 50]
            keep = truth != ignore
            confusion += torch.bincount(truth[keep] * num_classes + pred[keep], minlength=num_classes**2)
    model.train()
    confusion = confusion.view(num_classes, num_classes).double()
    union = confusion.sum(0) + confusion.sum(1) - confusion.diag()
    return (confusion.diag()[union > 0] / union[union > 0]).mean().item()


def stacked(dataset, normalise, hardware):
    images, masks, _ = dataset.collate([dataset[i] for i in range(len(dataset))])
    return normalise(images, hardware), masks


def plain_loop(overrides: list[str], depth: int | None, lr: float, seconds: float) -> tuple[float, int]:
    """The plain loop for `seconds` of training steps; (best epoch-end mIoU, epochs)."""
    cfg = runner.compose("train", ["task=segmentation", "model=unet", "model.aux=false", *overrides,
                                   *([f"model.depth={depth}"] if depth else [])])
    hardware = C.setup(cfg)
    task = C.task_from(cfg)
    train = task.open_split(cfg.dataset.train_split, v2.RandomHorizontalFlip(), skip_invalid=False, seed=0, train=True)
    val = task.open_split(cfg.dataset.split, None, skip_invalid=False, seed=0)
    val_images, val_masks = stacked(val, task.normalise, hardware)
    torch.manual_seed(0)
    model = C.to_device(task.build_model(C.plain(cfg.model), len(train.classes)), hardware)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(train, batch_size=8, shuffle=True, drop_last=True, collate_fn=train.collate)
    ignore, spent, best, epochs = task.ignore_index, 0.0, 0.0, 0
    while spent < seconds:
        start = time.perf_counter()
        for images, masks, _ in loader:
            with torch.autocast("cpu", hardware.amp_dtype or torch.float32, enabled=hardware.amp_dtype is not None):
                loss = F.cross_entropy(model(task.normalise(images, hardware)).float(), masks, ignore_index=ignore)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        spent += time.perf_counter() - start
        epochs += 1
        best = max(best, miou(model, val_images, val_masks, hardware, len(train.classes), ignore))
        print(f"  plain loop epoch {epochs}: {spent:.0f} s, mIoU {best:.3f} (best so far)", flush=True)
    return best, epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lr", type=float, default=1e-3, help="the plain loop's constant AdamW lr")
    parser.add_argument("--depth", type=int, default=None, help="the plain loop's U-Net depth (default: cvtool's)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    ours = cvtool_run(args.overrides)
    print(f"  cvtool train: mIoU {ours['best']:.3f} after {ours['epochs']} epochs ({ours['train_time_s']:.0f} s)")
    plain, epochs = plain_loop(args.overrides, args.depth, args.lr, ours["train_time_s"])
    print(f"  plain loop:   mIoU {plain:.3f} after {epochs} epochs (lr {args.lr:g}, "
          f"depth {args.depth or 'as cvtool'})")
    print(f"  ratio cvtool/plain = {ours['best'] / plain:.3f}  (target >= 1)")


if __name__ == "__main__":
    main()
