"""`cvtool eval ckpt=PATH`: evaluate a trained model on a dataset split with the task's evaluator."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from cvtool.config import runner
from cvtool.engine.inference import run_inference
from cvtool.utils import distributed as dist
from cvtool.utils.atomic import atomic_write_text

from . import components as C
from .checkpoints import check_compatible, checkpoint_overrides
from .report import classification_table, show
from .restore import restore

log = logging.getLogger("cvtool.eval")


def main(overrides: list[str], multirun: bool = False) -> list[dict]:
    return runner.run("eval", checkpoint_overrides(overrides), evaluate, multirun=multirun)


def evaluate(cfg: DictConfig, run_dir: Path | None) -> dict:
    hardware = C.setup(cfg)
    model, task, class_names, state = restore(cfg, hardware)
    dataset = task.open_split(cfg.dataset.split, C.transforms(cfg, "eval_transforms"),
                              skip_invalid=cfg.data.skip_invalid, seed=cfg.seed, classes=class_names)
    check_compatible(state, task.name, dataset.classes)
    log.info("evaluating %s on %s", state["path"], dataset.source)
    metrics = run_inference(model, task, C.loader(dataset, cfg, hardware, train=False),
                            task.build_evaluator(len(class_names)), hardware)
    run_dir = C.run_dir_path(run_dir)
    if dist.is_main():
        text = json.dumps(metrics, indent=2)
        for path in filter(None, [run_dir and run_dir / "metrics.json", cfg.json and Path(cfg.json)]):
            atomic_write_text(path, text)
        show(classification_table(metrics, class_names, title=f"{dataset.source}"))
        log.info("metrics written to %s", run_dir / "metrics.json" if run_dir else cfg.json)
    dist.shutdown()
    return metrics
