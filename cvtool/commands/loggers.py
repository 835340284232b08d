"""`logger=[...]` -> the training's MetricsLogger, with one tracking backend per name (rank 0 only)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cvtool import __version__
from cvtool.config import runner
from cvtool.config.errors import suggest
from cvtool.engine.metrics_log import Backend, MetricsLogger, TensorBoardBackend
from cvtool.errors import CvtoolError
from cvtool.utils import distributed as dist

from .checkpoints import without

LOGGERS = ("tensorboard", "mlflow")


def metrics_logger(cfg: DictConfig, run_dir: Path | None) -> MetricsLogger:
    """metrics.jsonl plus the backends `cfg.logger` names; ranks > 0 (no run dir) get a logger that writes nothing."""
    names = logger_names(cfg.logger)
    if run_dir is None:
        return MetricsLogger(None)
    builders = {"tensorboard": _tensorboard, "mlflow": _mlflow}
    return MetricsLogger(run_dir, {name: builders[name](cfg, run_dir) for name in names})


def logger_names(value) -> list[str]:
    """The names of `logger=` (a list, or one name), checked against LOGGERS."""
    names = [value] if isinstance(value, str) else list(value or [])
    for name in names:
        if name not in LOGGERS:
            hint = suggest(str(name), list(LOGGERS))
            raise CvtoolError(f"unknown logger {name!r}", where="logger",
                              fix=(hint + " " if hint else "") + f"choose from: {', '.join(LOGGERS)} "
                                  "(e.g. 'logger=[tensorboard,mlflow]'; logger=[] writes metrics.jsonl only)")
    return list(dict.fromkeys(names))


def _tensorboard(cfg: DictConfig, run_dir: Path) -> Backend:
    return TensorBoardBackend(run_dir / "tensorboard")


def _mlflow(cfg: DictConfig, run_dir: Path) -> Backend:
    from cvtool.engine.tracking import MLflowBackend, override_params

    settings = cfg.mlflow
    overrides = without(runner.current_overrides(), "resume", "command")
    params = {**override_params(overrides), "task": cfg.task.name, "model": cfg.model.name,
              "dataset": cfg.dataset.name, "seed": cfg.seed, "world_size": dist.world_size()}
    return MLflowBackend(tracking_uri=settings.tracking_uri, artifacts=settings.artifacts,
                         experiment=settings.experiment, run_name=settings.run_name or default_run_name(run_dir),
                         params=params,
                         tags={"cvtool.version": __version__, "cvtool.run_dir": str(run_dir.resolve())},
                         config_text=OmegaConf.to_yaml(cfg, resolve=True),
                         best=run_dir / "checkpoints" / "best.pt" if settings.log_checkpoint else None)


def default_run_name(run_dir: Path) -> str:
    """The run dir's name; a sweep job's (runs/<task>/multirun/<timestamp>/<job number>) with its sweep's:
    2026-01-31_12-00-00/3."""
    job = run_dir.name.isdigit() and run_dir.parent.parent.name == "multirun"
    return f"{run_dir.parent.name}/{run_dir.name}" if job else run_dir.name
