"""`cvtool eval` of detection: the error analysis beside metrics.json (detection_analysis.json, pictures in plots/,
a TIDE table). numpy only, like the stored-predictions path that uses it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from cvtool.metrics.box_matching import DetectionData, coco_detection_data
from cvtool.metrics.coco import CocoEvaluator
from cvtool.metrics.voc import VOCEvaluator
from cvtool.utils import distributed as dist
from cvtool.utils.atomic import atomic_write_text

from .report import show, tide_table

log = logging.getLogger("cvtool.eval")


def analysis_input(cfg: DictConfig, evaluator) -> DetectionData | None:
    """An evaluated detection evaluator's ground truth and detections (None when analysis.enabled is false or the
    evaluator is not a detection one). Every DDP rank calls it: the detections are gathered."""
    if not cfg.analysis.enabled:
        return None
    if isinstance(evaluator, VOCEvaluator):
        return DetectionData(evaluator.gt, evaluator.detections(), list(evaluator.class_names), "voc")
    if isinstance(evaluator, CocoEvaluator):
        data = coco_detection_data(evaluator.gt.dataset,
                                   [r for part in dist.all_gather_objects(evaluator.results) for r in part])
        if data is None:
            log.info("detection analysis skipped: the results carry no boxes")
        return data
    return None


def write_analysis(data: DetectionData, cfg: DictConfig, run_dir: Path | None, title: str) -> dict:
    """Analyse, print the TIDE table, write <run dir>/detection_analysis.json and (plots=true) its pictures."""
    from cvtool.metrics.detection_analysis import analyse

    analysis = analyse(data, cfg.analysis)
    show(tide_table(analysis, f"detection errors: {title}"))
    if run_dir is None:
        return analysis
    path = atomic_write_text(run_dir / "detection_analysis.json", json.dumps(analysis, indent=1))
    log.info("detection analysis written to %s", path)
    if cfg.plots:
        draw_analysis(analysis, run_dir / "plots", title)
    return analysis


def draw_analysis(analysis: dict, directory: Path, title: str) -> None:
    """detection_confusion.png, pr_f1_vs_score.png, tide_errors.png."""
    from cvtool.viz.confusion import plot_confusion
    from cvtool.viz.detection_analysis import plot_pr_f1, plot_tide

    settings = analysis["settings"]
    plot_confusion(np.asarray(analysis["confusion"]["matrix"]), analysis["confusion"]["labels"],
                   directory / "detection_confusion.png",
                   title=f"score >= {settings['score_threshold']:g}, IoU >= {settings['iou_threshold']:g}\n{title}")
    plot_pr_f1(analysis["pr_vs_score"]["overall"], directory / "pr_f1_vs_score.png", title=title)
    plot_tide(analysis["tide"], directory / "tide_errors.png", title=title)
