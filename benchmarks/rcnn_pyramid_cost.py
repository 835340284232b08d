"""What the Faster R-CNN pyramid knobs save on a CPU: one training step (batch of 128 px shapes-sized images, the
shapes recipe's sampling, GroupNorm, fused AdamW) per variant, timed in one run with the variants interleaved,
printed as seconds and as a ratio to the shapes recipe. Accuracy of the same variants: docs/results.md (Faster R-CNN).

    python benchmarks/rcnn_pyramid_cost.py [--precision fp32|bf16] [--rounds 3] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from cvtool.engine.hardware import machine_summary
from cvtool.models.registry import create_model

RECIPE = {"norm": "gn", "rpn_batch_size_per_image": 64, "rpn_pre_nms_top_n_train": 600,
          "rpn_post_nms_top_n_train": 300, "box_batch_size_per_image": 16, "box_positive_fraction": 0.75,
          "roi_sampling_ratio": 1}
VARIANTS = {
    "shapes recipe (P2-P6, 256 ch, 128 px)": {"min_size": 128, "max_size": 128, "anchor_sizes": [8, 16, 32, 64, 128]},
    "fpn_channels=128": {"min_size": 128, "max_size": 128, "anchor_sizes": [8, 16, 32, 64, 128], "fpn_channels": 128},
    "fpn_channels=128, P3-P6": {"min_size": 128, "max_size": 128, "anchor_sizes": [16, 32, 64, 128],
                                "fpn_channels": 128, "returned_layers": [2, 3, 4]},
    "96 px, P3-P6": {"min_size": 96, "max_size": 96, "anchor_sizes": [16, 32, 64, 128], "returned_layers": [2, 3, 4]},
    "96 px": {"min_size": 96, "max_size": 96, "anchor_sizes": [8, 16, 32, 64, 128]},
}


def stepper(options: dict, batch: int, bf16: bool):
    torch.manual_seed(0)
    model = create_model("faster_rcnn", num_classes=5, **RECIPE, **options).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    images = [torch.rand(3, 128, 128) for _ in range(batch)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 40.0, 40.0], [60.0, 60.0, 100.0, 90.0]]),
                "labels": torch.tensor([1, 2])} for _ in range(batch)]

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up (oneDNN primitives, optimizer state)
    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    steps = {name: stepper(options, args.batch, args.precision == "bf16") for name, options in VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):  # interleaved, so drifting machine load touches every variant alike
        for name, step in steps.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            times[name].append((time.perf_counter() - t) / args.steps)
    print(f"machine: {machine_summary()}; {args.precision}, batch {args.batch}, median of {args.rounds} rounds")
    reference = statistics.median(next(iter(times.values())))
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"{name:<40}{seconds:>8.3f} s/step{seconds / reference:>8.2f}x")


if __name__ == "__main__":
    main()
