"""`cvtool data proposals`: region proposals for a split (selective search, edge boxes, the fixed k-means set of "R-CNN
minus R", or an existing file to check and convert), written in Fast R-CNN's .mat, detectron2's or MMDetection's
format, with their recall against the split's objects as a table, JSON and a plot."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvtool.config import runner
from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write_text

log = logging.getLogger("cvtool.proposals")

SHORTHANDS = ("method", "split")  # `method=...` stands for task.proposals.method=...
SUFFIX = {"mat": ".mat", "detectron2": ".pkl", "mmdet": ".pkl"}


def expanded(overrides: list[str]) -> list[str]:
    """task=detection unless given; `method=` and `split=` as task.proposals.method= / task.proposals.split=."""
    out = [] if any(o.startswith("task=") for o in overrides) else ["task=detection"]
    for override in overrides:
        key, _, value = override.partition("=")
        out.append(f"task.proposals.{key}={value}" if key in SHORTHANDS else override)
    return out


def main(overrides: list[str]) -> dict:
    from cvtool.commands import components as C
    from cvtool.data import proposal_sources as sources
    from cvtool.data.proposal_files import proposal_format, write_proposals
    from cvtool.metrics.proposals import proposal_recall, recall_curve
    from cvtool.viz.proposal_plots import draw_proposals, plot_recall_curves

    cfg = runner.compose("data", expanded(overrides))
    if cfg.task.name != "detection":
        raise CvtoolError(f"proposals are for detection data, not task={cfg.task.name}", where="task",
                          fix="use task=detection with a detection dataset (VOC or COCO format)")
    options = C.plain(cfg.task.proposals)
    task = C.task_from(cfg)
    split = options["split"] or cfg.dataset.split
    train = split == cfg.dataset.train_split
    dataset = task.open_split(split, None, skip_invalid=False, seed=cfg.seed, train=train)
    items = dataset.items
    method = str(options["method"])
    if sources.is_method(method):  # through the cache training reads: computed once for both
        from cvtool.data.roots import prepared_root
        from cvtool.tasks.detection_proposals import cache_dir, training_items

        found = sources.cached(method, items, split=split, cache_dir=cache_dir(task, prepared_root(task.dataset_cfg)),
                               options=options, jobs=int(options["jobs"]),
                               train_items=training_items(task) if method == "kmeans" else None)
    else:
        found = sources.from_file(method, items, split)
    fmt = options["format"]
    output = options["output"]
    if output is None:
        fmt = "detectron2" if fmt == "auto" else fmt
        name = method if sources.is_method(method) else Path(method).stem
        output = Path(cfg.paths.runs) / "detection" / "proposals" / f"{split}.{name}{SUFFIX[fmt]}"
    output = Path(output)
    fmt = proposal_format(output, fmt)
    output.parent.mkdir(parents=True, exist_ok=True)
    write_proposals(output, found, fmt)

    gt = [np.asarray(it.boxes)[~np.asarray(it.ignore, dtype=bool)] for it in items]  # VOC "difficult" excluded
    counts = [int(c) for c in options["counts"]]
    recall = proposal_recall(gt, found.boxes)
    curve = recall_curve(gt, found.boxes, counts)
    per_image = [len(b) for b in found.boxes]
    report = {"split": split, "images": len(items), "objects": int(sum(len(g) for g in gt)), "source": found.source,
              "file": str(output), "format": fmt, "proposals_per_image": {
                  "mean": float(np.mean(per_image)) if per_image else 0.0, "min": min(per_image, default=0),
                  "max": max(per_image, default=0)},
              "proposals": recall, "curve": {"counts": counts, **curve}}
    stem = output.with_suffix("")
    atomic_write_text(stem.with_name(stem.name + ".recall.json"), json.dumps(report, indent=2))
    plot = plot_recall_curves({found.source: curve}, counts, stem.with_name(stem.name + ".recall.png"))
    example = None
    if items:
        from PIL import Image

        with Image.open(items[0].file) as image:
            example = draw_proposals(np.asarray(image.convert("RGB")), found.boxes[0],
                                     stem.with_name(stem.name + ".example.png"))
    print_report(report, counts, plot, example)
    return report


def print_report(report: dict, counts: list[int], plot: Path, example: Path | None) -> None:
    console = Console()
    table = Table(title=escape(f"{report['source']} on {report['split']}: {report['images']} images, "
                               f"{report['objects']} objects, {report['proposals_per_image']['mean']:.0f} proposals "
                               f"per image"))
    table.add_column("proposals / image", justify="right")
    for key in ("recall@0.5", "recall@0.7", "AR"):
        table.add_column(key, justify="right")
    curve = report["curve"]
    for index, count in enumerate(counts):
        table.add_row(str(count), *(f"{curve[key][index]:.3f}" for key in ("recall@0.5", "recall@0.7", "AR")))
    console.print(table)
    console.print(escape(f"wrote {report['file']} ({report['format']}), the recall JSON and plot {plot}"
                         + (f", proposals drawn in {example}" if example else "")))
