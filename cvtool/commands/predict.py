"""`cvtool predict ckpt=PATH [source=IMAGE|DIR|VIDEO]`: predictions in the formats `cvtool eval predictions=`
reads, plus overlay images (videos, webcams and streams: predict_video.py). Without source=, the dataset's
evaluation split is predicted (with its ground truth), so predict -> eval round-trips to the numbers of
`cvtool eval ckpt=`."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from cvtool.config import runner
from cvtool.data.image_files import list_images
from cvtool.data.video import video_source
from cvtool.engine.inference import OutputCollector, run_inference

from . import components as C
from .checkpoints import check_compatible, checkpoint_overrides
from .restore import restore_or_load

log = logging.getLogger("cvtool.predict")


def main(overrides: list[str]) -> list[dict]:
    return runner.run("predict", checkpoint_overrides(overrides), predict)


def predict(cfg: DictConfig, run_dir: Path | None) -> dict:
    hardware = C.setup(cfg)
    model, task, class_names, state = restore_or_load(cfg, hardware)
    video = video_source(cfg.source) if cfg.source is not None else None
    if video:
        from .predict_video import predict_video

        return predict_video(cfg, video, model, task, class_names, hardware, C.run_dir_path(run_dir) or Path("."))
    transform = C.transforms(cfg, "eval_transforms")
    if cfg.source:
        images = task.open_source(list_images(cfg.source), transform, class_names, Path(cfg.source))
    else:
        images = task.open_split(cfg.dataset.split, transform, skip_invalid=cfg.data.skip_invalid, seed=cfg.seed,
                                 classes=class_names)
        check_compatible(state, task.name, images.classes)
    log.info("predicting %d images of %s", len(images), cfg.source or f"{cfg.dataset.name}/{cfg.dataset.split}")
    outputs = run_inference(model, task, C.loader(images, cfg, hardware, train=False), OutputCollector(), hardware,
                            description="predict")
    run_dir = C.run_dir_path(run_dir) or Path(".")
    written = task.write_results(run_dir, images, outputs, cfg.dataset.split)
    drawn = task.draw_overlays(run_dir / "overlays", images, outputs, cfg.overlays) if cfg.overlays != 0 else 0
    log.info("%d predictions written to %s (%s, %d overlays/)", len(images), run_dir,
             ", ".join(Path(p).name for p in written), drawn)
    return {"num_images": len(images), "run_dir": str(run_dir), "files": [str(p) for p in written]}
