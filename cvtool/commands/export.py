"""`cvtool export ckpt=PATH format=onnx|torchscript|torch_export [opset=..] [dynamic=true] [input_size=H,W]`:
write the model in a deployable format, run the written file on sample inputs of two sizes/batches, compare it
with the eager model, and keep it (with a sidecar JSON of its pre/postprocessing) only when they agree."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cvtool import __version__
from cvtool.config import runner
from cvtool.engine.hardware import Hardware
from cvtool.errors import CvtoolError, ExitRequest
from cvtool.exporting.formats import SUFFIX, load_runner, onnx_opset, write
from cvtool.exporting.graphs import (
    FIXED_SIZE_KINDS,
    NORMALISED_KINDS,
    Graph,
    dense_selection,
    export_graph,
    select_dense,
)
from cvtool.exporting.runtime import sidecar_path
from cvtool.exporting.verify import Check, as_detections, dense_check, detection_check, shape_name
from cvtool.utils.atomic import atomic_write_text

from . import components as C
from .checkpoints import checkpoint_overrides
from .inspect_model import input_size
from .restore import restore

log = logging.getLogger("cvtool.export")
CPU = Hardware(torch.device("cpu"), None, False, False, False, False, False)


def main(overrides: list[str]) -> list[dict]:
    return runner.run("export", checkpoint_overrides(overrides), export)


def _images(cfg: DictConfig, task, class_names: list[str], count: int, size: tuple[int, int]) -> torch.Tensor:
    """`count` images of the evaluation split in [0, 1], resized to `size` (seeded noise if the data is missing)."""
    try:
        dataset = task.open_split(cfg.dataset.split, C.transforms(cfg, "eval_transforms"), skip_invalid=True,
                                  seed=cfg.seed, classes=class_names)
        items = [dataset[i][0] for i in range(min(count, len(dataset)))]
    except CvtoolError as err:
        log.warning("sample inputs are seeded noise: the evaluation split cannot be read (%s)", err.line())
        items = []
    images = [F.interpolate(torch.as_tensor(item)[None].float() / 255, size, mode="bilinear")[0] for item in items]
    generator = torch.Generator().manual_seed(cfg.seed)
    while len(images) < count:
        images.append(torch.rand(cfg.dataset.channels, *size, generator=generator))
    return torch.stack(images)


def samples(cfg: DictConfig, task, graph: Graph, class_names: list[str]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(the example input the graph is exported with, the inputs it is verified on). Dynamic exports are checked
    at a second batch size (classifiers: their input size is fixed by the preprocessing) or at a second image
    size; static ones on two different images."""
    crop = list(cfg.task.input_size) if graph.kind == "heatmap" else None  # top-down pose: the person crop's size
    height, width = size = input_size(cfg, crop or cfg.dataset.image_size)
    other = (max(32, round(height * 0.75)), max(32, round(width * 1.25)))
    images = _images(cfg, task, class_names, 3, size)
    if graph.kind in NORMALISED_KINDS:  # normalised as the task's preprocess does
        images = task.normalise(images * 255, CPU)
    resized = F.interpolate(images[1:3], other, mode="bilinear")
    if not cfg.dynamic:
        pick = (lambda i: images[i]) if not graph.batched else (lambda i: images[i:i + 1])
        return pick(0), [pick(0), pick(1)]
    if not graph.batched:
        return images[0], [images[0], resized[0]]
    if graph.kind in FIXED_SIZE_KINDS:
        return images[:2], [images[:1], images]
    return images[:2], [images[:1], resized]


def verify(graph: Graph, written_path: Path, inputs: list[torch.Tensor], cfg: DictConfig) -> list[Check]:
    """Run the written file and the eager module on every input and compare their outputs."""
    run = load_runner(written_path, torch.device("cpu"))
    tol = cfg.export
    checks = []
    for image in inputs:
        name = shape_name(image)
        with torch.no_grad():
            reference = graph.module(image)
        reference = list(reference) if isinstance(reference, (tuple, list)) else [reference]
        exported = run(image)
        if graph.kind == "detector":
            checks.append(detection_check(name, as_detections(reference, graph.outputs),
                                          as_detections(exported, graph.outputs), tol.match_score, tol.box_atol,
                                          tol.score_atol, tol.keypoint_atol))
            continue
        check = dense_check(name, reference, exported, tol.atol, tol.rtol)
        if graph.kind == "dense_detector" and check.passed:  # and the detections NMS keeps from them
            options, hw = dense_selection(graph.module.model), tuple(image.shape[-2:])
            matches = [detection_check(name, select_dense(*(r[i] for r in reference), hw, **options),
                                       select_dense(*(e[i] for e in exported), hw, **options),
                                       tol.match_score, tol.box_atol, tol.score_atol) for i in range(len(image))]
            worst = next((m for m in matches if not m.passed), matches[0])
            check = Check(name, worst.passed, f"{check.detail}; {worst.detail}", check.max_diff)
        checks.append(check)
    return checks


def sidecar(cfg: DictConfig, graph: Graph, written, example: torch.Tensor, model, class_names: list[str],
            state: dict, checks: list[Check]) -> dict:
    """What a deployment needs besides the graph: classes, pre/postprocessing, names, and how it was verified."""
    dynamic = bool(cfg.dynamic)
    shape = [graph.free_axes.get(i, s) if dynamic else s for i, s in enumerate(example.shape)]
    normalised = graph.kind in NORMALISED_KINDS
    if normalised:
        mean, std = list(cfg.dataset.mean), list(cfg.dataset.std)
    else:  # detectors normalise inside with their own statistics (torchvision's transform, YOLO's buffers)
        inner = getattr(model, "transform", model)
        mean, std = (torch.as_tensor(inner.image_mean).flatten().tolist(),
                     torch.as_tensor(inner.image_std).flatten().tolist())
    pre = {"input": "float32 RGB" if cfg.dataset.channels == 3 else "float32 grey",
           "layout": "NCHW" if graph.batched else "CHW (one image per call)",
           "scale": "pixel / 255", "mean": mean, "std": std,
           "normalise": "(pixel / 255 - mean) / std, outside the graph" if normalised
           else "inside the graph (pass [0, 1] pixels)",
           "size": list(input_size(cfg, cfg.dataset.image_size)),
           "resize": "to size (classifiers and embedders take only it)" if graph.kind in FIXED_SIZE_KINDS
           else "none needed: the graph takes any size" if dynamic else "to size (dynamic=false)"}
    post = _postprocess(graph, model)
    return {
        "cvtool_version": __version__, "format": written.format, "exporter": written.exporter,
        "notes": written.notes, "file": written.path.name, "task": cfg.task.name, "model": cfg.model.name,
        "class_names": class_names, "label_offset": getattr(model, "label_offset", 0),
        "graph": {"kind": graph.kind, "input": graph.input_name, "input_shape": shape, "outputs": graph.outputs,
                  "dynamic": dynamic, "opset": onnx_opset(written.path) if written.format == "onnx" else None},
        "preprocess": pre, "postprocess": post,
        "verification": [{"input": c.sample, "passed": c.passed, "detail": c.detail} for c in checks],
        "checkpoint": str(state["path"]), "overrides": state.get("overrides", []), "config": state["config"],
    }


def _postprocess(graph: Graph, model) -> dict:
    """How to read the graph's outputs."""
    if graph.kind == "classifier":
        return {"logits": "softmax over classes"}
    if graph.kind == "embedder":
        return {"embedding": "one vector per image (unit length when model.normalize); Euclidean distance below "
                             "eval's verification threshold (metrics.json) = same identity"}
    if graph.kind == "segmenter":
        return {"logits": "argmax over classes (axis 1) = class index per pixel"}
    if graph.kind == "recognizer":
        return {"logits": f"per frame (one per {model.frame_stride} input columns) scores of the CTC blank (class 0) "
                          "and class_names[i - 1] (class i); best path: argmax per frame, merge repeats, drop blanks"}
    if graph.kind == "heatmap":
        return {"heatmaps": "one map per keypoint at 1/4 of the crop's size: its argmax x 4 = the keypoint in the crop"}
    if graph.kind == "detector":
        keypoints = {"keypoints": "x, y in input pixels, 1 per keypoint", "keypoints_scores": "heatmap logit per "
                     "keypoint"} if "keypoints" in graph.outputs else {}
        return {"boxes": "xyxy in input pixels", "scores": "confidence",
                "labels": f"class index + {getattr(model, 'label_offset', 0)} (label_offset)", **keypoints}
    return {"boxes": "xyxy in input pixels, every prediction", "scores": "per-class confidence",
            "select": dense_selection(model)}


def summary_table(written, checks: list[Check], size_mb: float) -> Table:
    table = Table(title=escape(f"{written.path.name}: {written.exporter}, {size_mb:.1f} MB"))
    table.add_column("input")
    table.add_column("agrees with eager")
    table.add_column("detail")
    for check in checks:
        table.add_row(check.sample, "[green]yes" if check.passed else "[red]NO", escape(check.detail))
    return table


def target_path(cfg: DictConfig, run_dir: Path | None) -> Path:
    if cfg.export.output:
        return Path(cfg.export.output).with_suffix(SUFFIX[cfg.format])
    return (run_dir or Path(".")) / f"{cfg.model.name}{SUFFIX[cfg.format]}"


def export(cfg: DictConfig, run_dir: Path | None) -> dict:
    if cfg.format not in SUFFIX:
        raise CvtoolError(f"unknown export format '{cfg.format}'", where=f"format={cfg.format}",
                          fix=f"choose one of: {', '.join(SUFFIX)}")
    if not isinstance(cfg.opset, int) or isinstance(cfg.opset, bool) or cfg.opset < 7:
        raise CvtoolError(f"opset={cfg.opset} is not an ONNX opset", where="opset", fix="give a number, e.g. opset=18")
    if not isinstance(cfg.dynamic, bool):
        raise CvtoolError(f"dynamic={cfg.dynamic} is not true or false", where="dynamic", fix="dynamic=true|false")
    C.setup(cfg)
    model, task, class_names, state = restore(cfg, CPU)
    graph = export_graph(model, task.name, with_masks=getattr(task, "with_masks", False))
    example, inputs = samples(cfg, task, graph, class_names)
    target = target_path(cfg, run_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial"  # nothing appears under the final name unverified
    staging.mkdir(exist_ok=True)
    try:
        written = write(graph, example, cfg.format, staging / target.name, opset=cfg.opset, dynamic=cfg.dynamic)
        for note in written.notes:
            log.warning("%s", note)
        checks = verify(graph, written.path, inputs, cfg)
        size_mb = written.path.stat().st_size / 2**20
        Console().print(summary_table(written, checks, size_mb))
        if not all(c.passed for c in checks):
            failed = next(c for c in checks if not c.passed)
            hint = ("; a barely trained detector's near-equal scores can reorder its detections: "
                    "export.match_score=0.05 compares only the confident ones") if "detector" in graph.kind else ""
            raise ExitRequest(f"error: the exported {written.format} model disagrees with the eager model on input "
                              f"{failed.sample}: {failed.detail}; nothing was written{hint}", 1)
        final = target.with_suffix(written.path.suffix)
        info = sidecar(cfg, graph, written, example, model, class_names, state, checks)
        staged_sidecar = atomic_write_text(sidecar_path(written.path), json.dumps(info, indent=2) + "\n")
        os.replace(written.path, final)  # the model, then its sidecar: two renames, nothing half-written
        os.replace(staged_sidecar, sidecar_path(final))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    written.path = final
    log.info("wrote %s (%s) and %s", final, written.exporter, sidecar_path(final).name)
    return {"path": str(final), "format": written.format, "exporter": written.exporter, "notes": written.notes,
            "checks": [c.__dict__ for c in checks], "sidecar": str(sidecar_path(final)),
            "config": OmegaConf.to_container(cfg.export)}
