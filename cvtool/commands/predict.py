"""`cvtool predict ckpt=PATH source=IMAGE|DIR`: predictions as CSV/NPY plus labelled overlay images."""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from torchvision.transforms import v2

from cvtool.config import runner
from cvtool.data.image_files import ImageFiles, list_images
from cvtool.engine.inference import autocast
from cvtool.engine.progress import track
from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write, atomic_write_text

from . import components as C
from .checkpoints import checkpoint_overrides
from .restore import restore

log = logging.getLogger("cvtool.predict")


def main(overrides: list[str]) -> list[dict]:
    return runner.run("predict", checkpoint_overrides(overrides), predict)


def predict(cfg: DictConfig, run_dir: Path | None) -> dict:
    if not cfg.source:
        raise CvtoolError("`cvtool predict` needs images", where="source", fix="pass source=IMAGE or source=DIR")
    hardware = C.setup(cfg)
    model, task, class_names, state = restore(cfg, hardware)
    files = list_images(cfg.source)
    size = cfg.dataset.image_size
    transform = v2.Compose([*(C.transforms(cfg, "eval_transforms") or []), v2.Resize((size, size))])
    images = ImageFiles(files, cfg.dataset.channels, transform)
    loader = torch.utils.data.DataLoader(images, batch_size=cfg.data.eval_batch_size,
                                         num_workers=C.num_workers(cfg, images))
    logits = []
    with torch.inference_mode():
        for batch in track(loader, total=len(loader), description="predict"):
            batch = task.preprocess(batch, hardware)
            with autocast(hardware):
                logits.append(task.inference_step(model, batch).float().cpu())
    logits = torch.cat(logits)
    run_dir = C.run_dir_path(run_dir) or Path(".")
    rows = write_predictions(run_dir, files, logits, class_names)
    draw_overlays(run_dir / "overlays", files, rows)
    log.info("%d predictions written to %s (predictions.csv, logits.npy, overlays/)", len(rows), run_dir)
    return {"num_images": len(rows), "run_dir": str(run_dir)}


def write_predictions(run_dir: Path, files: list[Path], logits: torch.Tensor, class_names: list[str]) -> list[dict]:
    """predictions.csv (file, label index, class, probability, top-5) and the raw logits as logits.npy."""
    probs = logits.softmax(dim=1)
    k = min(5, len(class_names))
    top_p, top_i = probs.topk(k, dim=1)
    rows = [{"file": str(f), "label": int(i[0]), "class": class_names[int(i[0])], "score": float(p[0]),
             "top5": " ".join(class_names[int(j)] for j in i)} for f, p, i in zip(files, top_p, top_i)]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "predictions.csv", text.getvalue())
    atomic_write(run_dir / "logits.npy", lambda f: np.save(f, logits.numpy()))
    return rows


def draw_overlays(directory: Path, files: list[Path], rows: list[dict]) -> None:
    from cvtool.viz.draw import labelled

    directory.mkdir(parents=True, exist_ok=True)
    for index, (path, row) in enumerate(zip(files, rows)):
        labelled(path, f"{row['class']} {row['score']:.2f}").save(directory / f"{index:05d}_{path.stem}.png")
