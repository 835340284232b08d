"""The R-CNN lineage on one dataset and evaluator: OverFeat, R-CNN, Fast R-CNN with selective search, Fast R-CNN with
the fixed k-means boxes ("R-CNN minus R", Lenc & Vedaldi 2015) and Faster R-CNN, trained and evaluated on the embedded
shapes devkit (`dataset=shapes_det`) in one run, side by side: VOC07 and VOC10 mAP on the val split, the training time
(the whole `cvtool train` command; proposals are computed once beforehand, timed apart) and test images/s (the eval
inference loop alone, proposal time excluded as in the Fast R-CNN paper).

    python benchmarks/rcnn_lineage.py                       # every model, hardware.amp=auto, seed 0
    python benchmarks/rcnn_lineage.py --only fast_rcnn_ss rcnn --precision fp32 --seed 1
    python benchmarks/rcnn_lineage.py --quick               # a smoke run: tiny data, one epoch (no figures)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cvtool.engine.hardware import machine_summary

RUNS = {  # name: (what it is, train overrides)
    "overfeat": ("OverFeat (dense sliding windows, greedy merge)", ["model=overfeat"]),
    "rcnn": ("R-CNN (selective search, warped crops, SVMs + ridge)", ["model=rcnn"]),
    "fast_rcnn_ss": ("Fast R-CNN, selective search", ["model=fast_rcnn", "model.proposals=selective_search"]),
    "fast_rcnn_minus_r": ("Fast R-CNN, fixed k-means boxes (minus R)", ["model=fast_rcnn", "model.proposals=kmeans"]),
    "faster_rcnn": ("Faster R-CNN (RPN on the same trunk and head)", ["model=fast_rcnn", "model.proposals=rpn"]),
}
PRECISIONS = {"auto": "hardware.amp=auto", "fp32": "hardware.amp=off"}
QUICK = ["data.limit=16", "trainer.epochs=1", "data.batch_size=4", "trainer.val_every=1"]


def cvtool(*args: str) -> float:
    """Run a cvtool command; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cvtool", *args], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def proposals(method: str, split: str, runs: str) -> dict:
    """`cvtool data proposals` for a split (its recall report) and the method's time on one core."""
    out = Path(runs) / f"{split}.{method}.pkl"
    cvtool("data", "proposals", f"method={method}", f"split={split}", f"task.proposals.output={out}")
    report = json.loads(out.with_suffix(".recall.json").read_text())
    return {**proposal_time(method, split), **report["proposals"]}


def proposal_time(method: str, split: str, sample: int = 40) -> dict:
    """`method`'s time on one core, bypassing the cache `cvtool data proposals` fills: ms per image over the split's
    first `sample` images; k-means: the one fit of the fixed set on the training boxes (placing it costs nothing)."""
    from cvtool.commands import components as C
    from cvtool.commands.proposals import expanded
    from cvtool.config import runner
    from cvtool.data.proposal_sources import compute
    from cvtool.tasks.detection_proposals import training_items

    cfg = runner.compose("data", expanded([f"method={method}", f"split={split}"]))
    task = C.task_from(cfg)
    items = task.open_split(split, None, skip_invalid=False, seed=cfg.seed).items[:1 if method == "kmeans" else sample]
    train = training_items(task) if method == "kmeans" else None
    start = time.perf_counter()
    compute(method, items, options=C.plain(cfg.task.proposals), train_items=train, jobs=1)
    seconds = time.perf_counter() - start
    return {"fit_s": seconds} if method == "kmeans" else {"per_image_ms": 1000 * seconds / len(items)}


def inference_time(ckpt: Path, *overrides: str) -> tuple[int, float]:
    """(images, seconds) of the checkpoint's model over the val split: the inference loop alone (data loaded, the
    proposals read from their cache; no evaluation), as `cvtool eval` runs it."""
    import torch

    from cvtool.commands import components as C
    from cvtool.commands.checkpoints import checkpoint_overrides
    from cvtool.commands.restore import restore
    from cvtool.config import runner

    cfg = runner.compose("eval", checkpoint_overrides([f"ckpt={ckpt}", *overrides]))
    hardware = C.setup(cfg)
    model, task, classes, _ = restore(cfg, hardware)
    dataset = task.open_split(cfg.dataset.split, C.transforms(cfg, "eval_transforms"), skip_invalid=False,
                              seed=cfg.seed, classes=classes)
    loader = C.loader(dataset, cfg, hardware, train=False)
    batches = [task.preprocess(batch, hardware) for batch in loader]
    start = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            task.inference_step(model, batch)
    return len(dataset), time.perf_counter() - start


def measure(name: str, precision: str, seed: int, quick: bool, runs: str) -> dict:
    overrides = ["task=detection", *RUNS[name][1], PRECISIONS[precision], f"seed={seed}", f"paths.runs={runs}",
                 "plots=false", *(QUICK if quick else [])]
    train_s = cvtool("train", *overrides)
    run = max(Path(runs, "detection", "train").iterdir(), key=lambda p: p.stat().st_mtime)
    trained = json.loads((run / "metrics.json").read_text())
    ckpt = run / "checkpoints" / "best.pt"
    out = Path(runs) / f"{name}.json"
    eval_s = cvtool("eval", f"ckpt={ckpt}", f"paths.runs={runs}", f"json={out}", "plots=false",
                    "analysis.enabled=false", *(["data.limit=16"] if quick else []))
    metrics = json.loads(out.read_text())
    images, seconds = inference_time(ckpt, *(["data.limit=16"] if quick else []))
    return {"run": name, "precision": precision, "seed": seed, "voc07": metrics["voc07"]["mAP"],
            "voc10": metrics["voc10"]["mAP"], "train_min": train_s / 60, "epochs": trained["epochs"],
            "test_images_per_s": images / seconds, "eval_s": eval_s,
            "warnings": [w["kind"] for w in trained.get("warnings", [])]}


def table(rows: list[dict], recall: dict) -> str:
    lines = [f"machine: {machine_summary()}", "",
             "| method | VOC07 mAP | VOC10 mAP | training (min) | test images/s |", "|---|---|---|---|---|"]
    for r in rows:
        flag = f" ({', '.join(r['warnings'])})" if r["warnings"] else ""
        lines.append(f"| {RUNS[r['run']][0]}{flag} | {r['voc07']:.3f} | {r['voc10']:.3f} | {r['train_min']:.1f} | "
                     f"{r['test_images_per_s']:.1f} |")
    if recall:
        lines += ["", "| proposals (val) | time, one core | recall@0.5 (300) | recall@0.7 (300) | AR (300) |",
                  "|---|---|---|---|---|"]
        for method, r in recall.items():
            took = f"{r['fit_s']:.1f} s fit once" if "fit_s" in r else f"{r['per_image_ms']:.0f} ms per image"
            lines.append(f"| {method} | {took} | {r['recall@0.5']['300']:.3f} | "
                         f"{r['recall@0.7']['300']:.3f} | {r['AR']['300']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(RUNS), default=list(RUNS))
    parser.add_argument("--precision", choices=list(PRECISIONS), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny data, one epoch: checks the benchmark runs")
    parser.add_argument("--results", default="runs/benchmarks/rcnn_lineage.jsonl")
    args = parser.parse_args()
    rows, recall = [], {}
    with tempfile.TemporaryDirectory() as runs:
        if not args.quick:  # computed once (cached under the dataset root, where training reads them)
            for method in ("selective_search", "kmeans", "edge"):
                recall[method] = proposals(method, "val", runs)
                if method != "edge":
                    proposals(method, "train", runs)
        for name in args.only:
            row = measure(name, args.precision, args.seed, args.quick, runs)
            print(f"{name}: VOC07 {row['voc07']:.3f} VOC10 {row['voc10']:.3f} in {row['train_min']:.1f} min, "
                  f"{row['test_images_per_s']:.1f} test images/s", flush=True)
            rows.append(row)
    if not args.quick:
        results = Path(args.results)
        results.parent.mkdir(parents=True, exist_ok=True)
        with results.open("a") as f:
            for row in rows:
                f.write(json.dumps({"machine": machine_summary(), **row}) + "\n")
    print(table(rows, recall))


if __name__ == "__main__":
    main()
