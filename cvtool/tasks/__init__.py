"""Task adapters, one per task; `TASKS` maps a task name to its adapter class."""

from __future__ import annotations

from cvtool.errors import CvtoolError

AVAILABLE = ("classification", "detection", "segmentation", "keypoints", "embedding", "text")


def build_task(name: str, task_cfg: dict, dataset_cfg: dict, model_cfg: dict | None = None):
    """The adapter for task `name` (imported lazily so a command only loads the task it runs)."""
    if model_cfg is not None and name in AVAILABLE:
        check_model_task(model_cfg["name"], name)
    if name == "classification":
        from .classification import ClassificationTask

        return ClassificationTask(task_cfg, dataset_cfg, model_cfg)
    if name == "detection":
        from .detection import DetectionTask

        return DetectionTask(task_cfg, dataset_cfg, model_cfg)
    if name == "segmentation":
        from .segmentation import SegmentationTask

        return SegmentationTask(task_cfg, dataset_cfg, model_cfg)
    if name == "keypoints":
        from .keypoints import KeypointsTask

        return KeypointsTask(task_cfg, dataset_cfg, model_cfg)
    if name == "embedding":
        from .embedding import EmbeddingTask

        return EmbeddingTask(task_cfg, dataset_cfg, model_cfg)
    if name == "text":
        from .text import TextTask

        return TextTask(task_cfg, dataset_cfg, model_cfg)
    raise CvtoolError(f"unknown task '{name}'", where=f"task={name}", fix=f"choose one of: {', '.join(AVAILABLE)}")


def check_model_task(model: str, task: str) -> None:
    """A registered model of another task is refused before any data is read (a classifier cannot detect)."""
    from cvtool.models import list_models, model_info

    if model in list_models() and model_info(model).task != task:
        raise CvtoolError(f"model {model} is a {model_info(model).task} model, not a {task} one",
                          where=f"task={task} model={model}",
                          fix=f"{task} models: {', '.join(list_models(task=task))} (cvtool models --task {task})")
