"""`cvtool eval`: a trained model (ckpt=PATH) or stored predictions (predictions=PATH) -> metrics JSON + table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from cvtool.config import runner
from cvtool.errors import CvtoolError
from cvtool.metrics.detection_analysis import check_settings
from cvtool.utils import distributed as dist
from cvtool.utils.atomic import atomic_write_text

from .checkpoints import checkpoint_overrides
from .evaluate_stored import Evaluation
from .report import metrics_table, show

log = logging.getLogger("cvtool.eval")


def main(overrides: list[str], multirun: bool = False) -> list[dict]:
    return runner.run("eval", checkpoint_overrides(overrides), evaluate, multirun=multirun)


class Metrics(dict):
    """The metrics JSON as a dict, with the run directory that holds metrics.json and plots/ as `run_dir`."""

    def __init__(self, metrics: dict, run_dir: Path | None):
        super().__init__(metrics)
        self.run_dir = None if run_dir is None else str(run_dir)


def evaluate(cfg: DictConfig, run_dir: Path | None) -> Metrics:
    if cfg.predictions is not None and (cfg.ckpt is not None or cfg.model_file is not None):
        raise CvtoolError("both a model and predictions= given", where="ckpt/model_file/predictions",
                          fix="evaluate either a model (ckpt=PATH) or stored predictions (predictions=PATH)")
    check_settings(cfg.analysis)
    if cfg.predictions is not None:
        from .evaluate_stored import evaluate_stored  # numpy only: no torch import on this path

        evaluation = evaluate_stored(cfg)
    elif cfg.ckpt is not None or cfg.model_file is not None:
        from .evaluate_model import evaluate_model

        evaluation = evaluate_model(cfg)
    else:
        raise CvtoolError("nothing to evaluate", where="cvtool eval",
                          fix="pass ckpt=PATH (a trained model), model_file=PATH (an exported one) or "
                              "predictions=PATH (stored predictions)")
    if dist.is_main():
        report(evaluation, cfg, Path(run_dir) if run_dir is not None else None)
    dist.shutdown()
    return Metrics(evaluation.metrics, run_dir)


def report(evaluation: Evaluation, cfg: DictConfig, run_dir: Path | None) -> None:
    """metrics.json (run dir and json=PATH), the protocol banner and the table, then the pictures."""
    text = json.dumps(evaluation.metrics, indent=2)
    targets = [p for p in (run_dir and run_dir / "metrics.json", cfg.json and Path(cfg.json)) if p]
    for path in targets:
        atomic_write_text(path, text)
    show(metrics_table(evaluation.metrics, evaluation.class_names, title=evaluation.source), evaluation.protocol)
    log.info("metrics written to %s", " and ".join(map(str, targets)))
    if cfg.plots and run_dir is not None:
        draw_plots(evaluation, run_dir / "plots")
    if evaluation.detections is not None:
        from .detection_analysis import write_analysis

        write_analysis(evaluation.detections, cfg, run_dir, evaluation.source)


def draw_plots(evaluation: Evaluation, directory: Path) -> None:
    """confusion_matrix.png (classification, segmentation), pr_curves.png (detection), roc.png (embedding)."""
    if evaluation.confusion is not None:
        from cvtool.viz.confusion import plot_confusion

        plot_confusion(evaluation.confusion, evaluation.class_names, directory / "confusion_matrix.png",
                       title=evaluation.source)
    if evaluation.curves:
        from cvtool.viz.curves import plot_pr_curves

        plot_pr_curves(evaluation.curves, directory / "pr_curves.png", title=evaluation.source)
    if evaluation.roc is not None:
        from cvtool.viz.embedding_plots import roc_figure

        verification = evaluation.metrics["verification"]
        roc_figure(directory / "roc.png", *evaluation.roc, auc=verification["roc_auc"], eer=verification["eer"],
                   tar_at_far=verification["tar_at_far_1e-3"], title=evaluation.source)
