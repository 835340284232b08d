"""The guard for runs that learn nothing: each task's trivial baseline, the hook's rules, and real runs."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import only_run_dir, read_json

from cvtool.commands import train
from cvtool.engine.guard import LearningGuardHook
from cvtool.engine.hooks import EvalHook
from cvtool.metrics.base import Baseline
from cvtool.metrics.classification import ClassificationEvaluator, constant_prediction_accuracy
from cvtool.metrics.segmentation import SegmentationEvaluator, constant_prediction_metrics
from cvtool.tasks.classification import ClassificationTask
from cvtool.tasks.detection import DetectionTask
from cvtool.tasks.segmentation import SegmentationTask

NORM = {"mean": [0.5], "std": [0.5]}


def test_classification_baseline_is_the_majority_class_share():
    assert constant_prediction_accuracy(np.array([2, 6, 2]), k=1) == pytest.approx(0.6)
    assert constant_prediction_accuracy(np.array([2, 6, 2]), k=2) == pytest.approx(0.8)
    assert constant_prediction_accuracy(np.zeros(3), k=1) is None
    evaluator = ClassificationEvaluator(3, topk=2)
    evaluator.process({"target": torch.tensor([1, 1, 1, 0, 2])}, torch.randn(5, 3))
    evaluator.evaluate()
    task = ClassificationTask({"metric": "top1", "topk": 2}, NORM)
    assert task.trivial_baseline(evaluator) == Baseline(pytest.approx(0.6), "majority-class")
    task.cfg["metric"] = "top5"
    assert task.trivial_baseline(evaluator).value == pytest.approx(0.8)


def test_segmentation_baseline_is_the_miou_of_predicting_background_everywhere():
    rng = np.random.default_rng(0)
    mask = np.where(rng.random((4, 32, 32)) < 0.9, 0, rng.integers(1, 6, (4, 32, 32)))
    mask[:, 0] = 255  # void: left out, as in the metric
    background = SegmentationEvaluator(6, ignore_index=255)
    background.process({"mask": mask}, np.zeros_like(mask))
    scored = background.evaluate()
    task = SegmentationTask({"metric": "mIoU"}, {**NORM, "ignore_index": 255,
                                                  "classes": ["background", "a", "b", "c", "d", "e"]})
    assert task.trivial_baseline(background) == Baseline(pytest.approx(scored["mIoU"]), "background-only")
    # the run: 6 classes, ~92 % background pixels -> a background-only mIoU of ~0.154
    confusion = np.diag([924, 16, 15, 15, 15, 15])
    assert constant_prediction_metrics(confusion)["mIoU"] == pytest.approx(0.154)


def test_detection_baseline_is_zero():
    task = DetectionTask({"metric": "auto"}, {"kind": "voc"}, {"name": "yolo"})
    assert task.trivial_baseline(None) == Baseline(0.0, "no-detection")


def guarded(epochs: int, warmup_steps: int = 0) -> tuple[LearningGuardHook, SimpleNamespace]:
    """The hook with the shipped thresholds, and a stand-in trainer whose task's baseline is top1 = 0.2."""
    hook = LearningGuardHook(EvalHook(None, None, metric="top1", every=1), margin=0.02, fraction=0.333,
                             loss_rise=3.0, warmup_steps=warmup_steps)
    task = SimpleNamespace(trivial_baseline=lambda evaluator: Baseline(0.2, "majority-class"))
    trainer = SimpleNamespace(epoch=0, epochs=epochs, step=0, task=task, hardware=SimpleNamespace(amp_dtype=None),
                              val_metrics_this_epoch=None)
    return hook, trainer


def run_epoch(hook: LearningGuardHook, trainer: SimpleNamespace, top1: float | None, losses=(1.0,)) -> None:
    hook.before_epoch(trainer)
    for loss in losses:
        trainer.step += 1
        hook.after_step(trainer, {"loss": torch.tensor(loss)})
    trainer.epoch += 1
    trainer.val_metrics_this_epoch = None if top1 is None else {"top1": top1}
    hook.after_epoch(trainer)


def test_validations_at_baseline_for_a_third_of_the_epochs_warn_once_collapse_included(caplog):
    hook, trainer = guarded(epochs=9)
    with caplog.at_level(logging.WARNING, "cvtool.train"):
        for top1 in (0.5, 0.8, 0.2, 0.21, 0.9):  # a good start, then a collapse to the baseline (+ margin)
            run_epoch(hook, trainer, top1)
        assert hook.warnings == []
        run_epoch(hook, trainer, 0.19)
        assert [(w["kind"], w["epoch"]) for w in hook.warnings] == [("no_learning", 6)]
        resumed, trainer_again = guarded(epochs=9)
        resumed.load_state_dict(hook.state_dict())
        trainer_again.epoch, trainer_again.step = trainer.epoch, trainer.step
        run_epoch(resumed, trainer_again, 0.2)
    assert resumed.at_baseline == 4 and len(resumed.warnings) == 1
    assert [r.getMessage() for r in caplog.records] == [hook.warnings[0]["message"]]
    assert "top1 is 0.1900, no better than the majority-class baseline (0.2000) in 3 of the 6" in caplog.text


def test_one_validation_at_baseline_in_a_short_run_is_not_enough():
    hook, trainer = guarded(epochs=2)
    run_epoch(hook, trainer, 0.2)
    run_epoch(hook, trainer, 0.6)
    assert hook.warnings == []


def test_validations_during_warmup_do_not_count():
    hook, trainer = guarded(epochs=2, warmup_steps=2)  # debug=fast: the first validation falls inside the warmup
    run_epoch(hook, trainer, 0.2)
    run_epoch(hook, trainer, 0.2)
    assert hook.at_baseline == 1 and hook.warnings == []


def test_loss_after_warmup_far_above_its_first_value_warns():
    hook, trainer = guarded(epochs=5, warmup_steps=2)
    run_epoch(hook, trainer, None, losses=(2.0, 50.0, 5.0, 5.0))  # 50 is in the warmup; 5 < 3 x 2
    assert hook.warnings == []
    run_epoch(hook, trainer, None, losses=(7.0, 7.0))
    assert [(w["kind"], w["epoch"]) for w in hook.warnings] == [("loss_diverged", 2)]
    assert "epoch 2 after warmup, 7, is 3.5x its first value 2 —" in hook.warnings[0]["message"]


def digits_run(tmp_path: Path, *overrides: str) -> tuple[dict, Path]:
    """A short LeNet-5 run on scikit-learn's digits (bundled: nothing to generate)."""
    train.main(["experiment=lenet5_digits", f"paths.runs={tmp_path / 'runs'}", "hardware=cpu", "trainer.epochs=2",
                "data.limit=300", "sched.warmup_epochs=0", "plots=false", "logger=[]", *overrides])
    run = only_run_dir(tmp_path / "runs" / "classification" / "train")
    return read_json(run / "metrics.json"), run


def test_a_run_made_to_diverge_says_so_in_its_log_and_metrics(tmp_path):
    metrics, run = digits_run(tmp_path, "optim=sgd", "optim.lr=1e3")
    kinds = [w["kind"] for w in metrics["warnings"]]
    assert kinds[0] == "loss_diverged" and set(kinds) <= {"loss_diverged", "no_learning"}  # (the validations of
    # such a model are noise around the majority class: whether two of two land at it is chance)
    log = (run / "train.log").read_text()
    for warning in metrics["warnings"]:
        assert "optim.lr" in warning["message"] and "cvtool data check" in warning["message"]
        assert log.count(warning["message"]) == 2  # when seen, and again at the end


def test_a_healthy_run_has_no_warnings(tmp_path):
    metrics, _ = digits_run(tmp_path)
    assert metrics["warnings"] == []
