"""`cvtool eval ckpt=PATH`: a trained model on a dataset split, through the task's evaluator."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from cvtool.engine.inference import run_inference

from . import components as C
from .checkpoints import check_compatible
from .detection_analysis import analysis_input
from .evaluate_stored import Evaluation
from .restore import restore_or_load

log = logging.getLogger("cvtool.eval")


def evaluate_model(cfg: DictConfig) -> Evaluation:
    hardware = C.setup(cfg)
    model, task, class_names, state = restore_or_load(cfg, hardware)
    dataset = task.open_split(cfg.dataset.split, C.transforms(cfg, "eval_transforms"),
                              skip_invalid=cfg.data.skip_invalid, seed=cfg.seed, classes=class_names)
    check_compatible(state, task.name, dataset.classes)
    log.info("evaluating %s on %s", state["path"], dataset.source)
    evaluator = task.build_evaluator(dataset)
    metrics = run_inference(model, task, C.loader(dataset, cfg, hardware, train=False), evaluator, hardware)
    return Evaluation(metrics, class_names, evaluator.protocol(), str(dataset.source),
                      getattr(evaluator, "confusion", None), getattr(evaluator, "curves", None),
                      analysis_input(cfg, evaluator), getattr(evaluator, "last_roc", None))
