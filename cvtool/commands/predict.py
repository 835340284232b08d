"""`cvtool predict ckpt=PATH [source=IMAGE|DIR]`: predictions in the formats `cvtool eval predictions=` reads,
plus labelled overlay images. Without source=, the dataset's evaluation split is predicted (with its targets)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torchvision.transforms import v2

from cvtool.config import runner
from cvtool.data.image_files import ImageFiles, list_images
from cvtool.data.logits_files import write_classification_predictions
from cvtool.engine.inference import OutputCollector, run_inference

from . import components as C
from .checkpoints import check_compatible, checkpoint_overrides
from .restore import restore

log = logging.getLogger("cvtool.predict")


def main(overrides: list[str]) -> list[dict]:
    return runner.run("predict", checkpoint_overrides(overrides), predict)


def source_images(cfg: DictConfig, class_names: list[str]):
    """(dataset of (image, index), file names, targets or None): images under source=, targets when the files
    sit in <class>/ folders named like the model's classes (an ImageFolder)."""
    files = list_images(cfg.source)
    size = cfg.dataset.image_size
    transform = v2.Compose([*(C.transforms(cfg, "eval_transforms") or []), v2.Resize((size, size))])
    parents = [f.parent.name for f in files]
    in_class_dirs = Path(cfg.source).is_dir() and all(f.parent.parent == Path(cfg.source) for f in files)
    targets = [class_names.index(p) for p in parents] if in_class_dirs and set(parents) <= set(class_names) else None
    return ImageFiles(files, cfg.dataset.channels, transform), [str(f) for f in files], targets


def split_images(cfg: DictConfig, task, state: dict, class_names: list[str]):
    """(dataset, item names, targets) of the dataset's evaluation split, read exactly as `cvtool eval` reads it."""
    dataset = task.open_split(cfg.dataset.split, C.transforms(cfg, "eval_transforms"),
                              skip_invalid=cfg.data.skip_invalid, seed=cfg.seed, classes=class_names)
    check_compatible(state, task.name, dataset.classes)
    names = dataset.files or [f"{cfg.dataset.name}/{cfg.dataset.split}#{i}" for i in range(len(dataset))]
    return dataset, names, list(dataset.targets)


def predict(cfg: DictConfig, run_dir: Path | None) -> dict:
    hardware = C.setup(cfg)
    model, task, class_names, state = restore(cfg, hardware)
    if cfg.source:
        images, names, targets = source_images(cfg, class_names)
    else:
        images, names, targets = split_images(cfg, task, state, class_names)
    log.info("predicting %d images of %s", len(images), cfg.source or f"{cfg.dataset.name}/{cfg.dataset.split}")
    logits = run_inference(model, task, C.loader(images, cfg, hardware, train=False), OutputCollector(), hardware,
                           description="predict")
    run_dir = C.run_dir_path(run_dir) or Path(".")
    write_classification_predictions(run_dir, names, logits.numpy(), targets, class_names)
    drawn = draw_overlays(run_dir / "overlays", names, logits, class_names, cfg.overlays) if cfg.overlays else 0
    log.info("%d predictions written to %s (predictions.csv, logits.npy%s, %d overlays/)", len(names), run_dir,
             ", targets.npy" if targets is not None else "", drawn)
    return {"num_images": len(names), "run_dir": str(run_dir)}


def draw_overlays(directory: Path, names: list[str], logits: torch.Tensor, class_names: list[str],
                  limit: int | None) -> int:
    """Images labelled with the predicted class and probability (the first `limit` that are files)."""
    from cvtool.viz.draw import labelled

    directory.mkdir(parents=True, exist_ok=True)
    probs = logits.softmax(dim=1)
    score, label = probs.max(dim=1)
    count = 0
    for index, name in enumerate(names):
        path = Path(name)
        if limit is not None and count >= limit or not path.is_file():
            continue
        text = f"{class_names[label[index]]} {score[index]:.2f}"
        labelled(path, text).save(directory / f"{index:05d}_{path.stem}.png")
        count += 1
    return count
