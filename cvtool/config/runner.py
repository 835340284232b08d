"""The one place that drives Hydra's run/multirun machinery (hydra-core 1.3.x internals).

Hydra keeps doing what it is good at (composition, run dir, `.hydra/` snapshot, log file, `-m` sweeps and
sweeper plugins); we skip only its error reporting so user errors become one clean line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from cvtool.errors import CvtoolError
from cvtool.utils import distributed as dist

from .errors import dotted_keys, missing_value, translate
from .locate import conf_dir
from .value_types import check_types, value_keys

CONFIG_NAME = "config"
Job = Callable[[DictConfig, "Path | None"], Any]


def _recipe(key: str, *fallback: Any, _root_: DictConfig) -> Any:
    """`${recipe:KEY}`: KEY of the dataset's training recipe for the chosen model (dataset.recipe.<model name>),
    else of its default row (dataset.recipe.default): runs sized per model and per dataset. `${recipe:KEY,VALUE}`:
    VALUE where neither row has KEY."""
    rows = _root_.dataset.recipe
    row = rows.get(_root_.model.name) if "model" in _root_ else None
    if row is not None and key in row:
        return row[key]
    return rows.default[key] if key in rows.default or not fallback else fallback[0]


if not OmegaConf.has_resolver("recipe"):
    OmegaConf.register_new_resolver("recipe", _recipe)


@dataclass
class _Failure:
    """A job's exception carried past Hydra's run_job (which would print a line of its own)."""

    error: BaseException


def _create_hydra():
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path

    return Hydra.create_main_hydra2(task_name="cvtool", config_search_path=create_config_search_path(
        str(conf_dir())))


def _clear() -> None:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


SIZE_KEYS = ("input_size",)  # `input_size=H,W` is a size, not a Hydra sweep over H and W


def _with_command(command: str, overrides: list[str]) -> list[str]:
    def as_list(override: str) -> str:
        key, _, value = override.partition("=")
        bare = "," in value and not value.startswith(("[", "'", '"'))
        return f"{key}=[{value}]" if key in SIZE_KEYS and bare else override

    return [f"command={command}", *map(as_list, overrides)]


def _compose(hydra, overrides: list[str]) -> DictConfig:
    from hydra.types import RunMode

    return hydra.compose_config(CONFIG_NAME, overrides, run_mode=RunMode.RUN, with_log_configuration=False)


def _translated(hydra, overrides: list[str], exc: BaseException) -> BaseException:
    base = [o for o in overrides if o.startswith("command=") or "=" in o and o.split("=")[0] in (
        "task", "model", "dataset")]

    def known_keys() -> list[str]:
        try:
            return dotted_keys(_compose(hydra, base))
        except Exception:
            return []

    return translate(exc, known_keys) or exc


def _check_types(hydra, cfg: DictConfig, overrides: list[str]) -> None:
    """Values set by `overrides` must have the types of the defaults they replace (composed without them)."""
    keys = [key for key in value_keys(overrides) if key != "command"]
    if not keys:
        return
    try:
        defaults = _compose(hydra, [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in keys])
    except Exception:  # noqa: BLE001 - composition needs one of those values: no defaults to compare with
        return
    check_types(cfg, defaults, keys)


def compose(command: str, overrides: list[str]) -> DictConfig:
    """Compose the config as a run would see it, without creating a run dir (config show, DDP ranks > 0)."""
    overrides = _with_command(command, overrides)
    hydra = _create_hydra()
    try:
        try:
            cfg = _compose(hydra, overrides)
        except CvtoolError:
            raise
        except Exception as exc:  # noqa: BLE001 - translated or re-raised as is
            raise _translated(hydra, overrides, exc) from exc
        _check_types(hydra, cfg, overrides)
        with_hydra = cfg
        cfg = OmegaConf.masked_copy(with_hydra, [k for k in with_hydra.keys() if k != "hydra"])
        OmegaConf.set_struct(cfg, True)
        return cfg
    finally:
        _clear()


def run(command: str, overrides: list[str], job: Job, *, multirun: bool = False) -> list[Any]:
    """Run `job(cfg, run_dir)` once (or once per sweep point with `multirun`) through Hydra's launcher.

    Ranks > 0 of a torchrun job compose the same config but get no run dir (only rank 0 writes).
    """
    if int(os.environ.get("RANK", "0")) > 0:
        return [job(compose(command, overrides), None)]
    overrides = _with_command(command, overrides)
    def task_function(cfg: DictConfig) -> Any:
        from hydra.core.hydra_config import HydraConfig

        try:
            _check_types(hydra, cfg, list(HydraConfig.get().overrides.task))
            run_dir = Path(HydraConfig.get().runtime.output_dir)
            if multirun and dist.export_submitit_env():  # a job of several tasks: one DDP process per task
                cfg.hardware.distributed = True
                if int(os.environ["RANK"]) > 0:  # global rank 0 alone writes (run dir, log file)
                    run_dir = None
                    _close_file_logging()
            return job(cfg, run_dir)
        except BaseException as exc:  # noqa: BLE001 - re-raised after Hydra returns
            if isinstance(exc, SystemExit) and dist.in_submitit_job():
                raise  # submitit's pre-emption handler requeues the job by exiting with its own code
            return _Failure(missing_value(exc) or exc)

    hydra = _create_hydra()
    try:
        try:
            if multirun:
                returns = hydra.multirun(CONFIG_NAME, task_function, overrides + ["hydra.mode=MULTIRUN"])
                returns = [r for batch in returns for r in batch]
            else:
                returns = [hydra.run(CONFIG_NAME, task_function, overrides + ["hydra.mode=RUN"])]
        except Exception as exc:  # noqa: BLE001
            raise _translated(hydra, overrides, exc) from exc
    finally:
        _clear()
    for ret in returns:
        value = ret._return_value
        if isinstance(value, _Failure):
            raise value.error
        if isinstance(value, BaseException):  # a failure raised outside our wrapper (e.g. in a callback)
            raise value
    return [ret._return_value for ret in returns]  # (also from jobs that ran in other processes or machines)


def _close_file_logging() -> None:
    """Detach the run dir's log file Hydra opened for this process (a DDP rank > 0 in a submitit job)."""
    import logging

    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(handler)
        handler.close()


def current_overrides() -> list[str]:
    """The task overrides of the running Hydra job ([] outside one, e.g. on DDP ranks > 0)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)
