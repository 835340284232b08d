"""Quality on the same budget: `cvtool train` (the dataset's recipe, as a user runs it) vs a plain loop written
like torchvision's reference `train_one_epoch` over the same model, data and augmentation, for as many epochs at
the same batch size: AdamW (weight decay 1e-4) with a per-step cosine schedule and no warmup, the model's own
losses only (U-Net: cross-entropy without the recipe's deep supervision and Dice), bf16 autocast where cvtool
uses it. Both are scored by the same evaluator on the val split, in one process (cvtool through its Python API).
Prints metric, time and the ratio (target >= 1).

    python benchmarks/quality_vs_plain_loop.py segmentation [--model unet] [--lr 1e-3] [overrides ...]
    python benchmarks/quality_vs_plain_loop.py detection --model faster_rcnn
    python benchmarks/quality_vs_plain_loop.py keypoints --model pose_heatmap   (or --model keypoint_rcnn)
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from detection_train import train_one_epoch as detection_epoch
from keypoints_train import train_one_epoch as keypoints_epoch
from segmentation_train import train_one_epoch as segmentation_epoch

from cvtool import train
from cvtool.commands import components as C
from cvtool.config import runner
from cvtool.engine.inference import run_inference

DEFAULT_MODEL = {"detection": "faster_rcnn", "segmentation": "unet", "keypoints": "pose_heatmap"}
TRAIN_ONE_EPOCH = {"detection": detection_epoch, "segmentation": segmentation_epoch, "keypoints": keypoints_epoch}
PLAIN = {"segmentation": ["model.aux=false"]}  # the textbook U-Net: no deep supervision


def lookup(metrics: dict, dotted: str) -> float:
    for key in dotted.split("."):
        metrics = metrics[key]
    return float(metrics)


def plain_run(task_name: str, args: list[str], epochs: int, lr: float | None) -> tuple[dict, float, float]:
    """The plain loop for `epochs` epochs, then the val split through the task's evaluator: (metrics, training
    seconds, lr)."""
    cfg = runner.compose("train", [*args, *PLAIN.get(task_name, [])])
    hardware = C.setup(cfg)
    task = C.task_from(cfg)
    train, val = C.train_val_sets(cfg, task)  # the splits (and data.limit) `cvtool train` uses
    torch.manual_seed(0)
    model = C.to_device(task.build_model(C.plain(cfg.model), len(train.classes)), hardware)
    lr = lr or float(cfg.optim.lr)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, fused=True)  # one kernel, same maths
    loader = torch.utils.data.DataLoader(train, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=getattr(train, "collate", None))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    start = time.perf_counter()
    for epoch in range(epochs):
        TRAIN_ONE_EPOCH[task_name](model, optimizer, loader, cfg, hardware, scheduler)
        print(f"  plain loop: epoch {epoch + 1}/{epochs} ({time.perf_counter() - start:.0f} s)", flush=True)
    seconds = time.perf_counter() - start
    metrics = run_inference(model, task, C.loader(val, cfg, hardware, train=False), task.build_evaluator(val),
                            hardware)
    return metrics, seconds, lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task", choices=sorted(DEFAULT_MODEL))
    parser.add_argument("--model", default=None)
    parser.add_argument("--lr", type=float, default=None, help="the plain loop's peak lr (default: cvtool's)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both runs")
    args = parser.parse_args()
    common = [f"task={args.task}", f"model={args.model or DEFAULT_MODEL[args.task]}", *args.overrides]
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as runs:  # (Hydra's log file stays open)
        start = time.perf_counter()
        ours = train(common, paths={"runs": runs})
        wall = time.perf_counter() - start
    metric = ours["metric"]
    print(f"  cvtool train: {metric} {ours['best']:.3f} after {ours['epochs']} epochs "
          f"(training {ours['train_time_s']:.0f} s, the whole call {wall:.0f} s)", flush=True)
    metrics, seconds, lr = plain_run(args.task, common, ours["epochs"], args.lr)
    plain = lookup(metrics, metric)
    print(f"  plain loop:   {metric} {plain:.3f} after {ours['epochs']} epochs (training {seconds:.0f} s, "
          f"AdamW {lr:g}, cosine)")
    print(f"  ratio cvtool/plain = {ours['best'] / max(plain, 1e-9):.3f}  (target >= 1)")


if __name__ == "__main__":
    main()
