"""The Python API: `from cvtool import train, evaluate, predict, export` runs what the CLI runs.

Every function takes Hydra overrides as typed after `cvtool COMMAND` (a list, or one string) and keyword overrides:
`train(["task=detection"], model="yolo", trainer={"epochs": 3}, **{"optim.lr": 1e-3})`. Keywords become Hydra
overrides (`render`), after the listed ones. User errors raise `CvtoolError`; an export that disagrees with the
eager model, or a training stopped by a signal, raises `ExitRequest` (its `code` is the CLI's exit status).
Nothing here prints a traceback or exits the interpreter. Torch and Hydra are imported on the first call only.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from numbers import Integral, Real
from typing import Any

from cvtool.errors import CvtoolError

Overrides = str | Sequence[str] | None


@dataclass(frozen=True)
class Sweep:
    """The values a multirun sweeps one key over: one job each."""

    values: tuple


def sweep(*values: Any) -> Sweep:
    """`train(multirun=True, seed=sweep(0, 1, 2))` runs what `cvtool train -m seed=0,1,2` runs."""
    if not values:
        raise CvtoolError("sweep() without values", where="sweep()", fix="give the values to run, e.g. sweep(0, 1)")
    return Sweep(values)


def render(overrides: Overrides = None, **options: Any) -> list[str]:
    """The Hydra override list: `overrides` (a list, or one string split as a shell splits it), then `options`
    (nested dicts become dotted keys: trainer={"epochs": 3} -> trainer.epochs=3)."""
    listed = shlex.split(overrides) if isinstance(overrides, str) else list(overrides or [])
    wrong = next((o for o in listed if not isinstance(o, str)), None)
    if wrong is not None:
        raise CvtoolError(f"override {wrong!r} is not a string", where="overrides",
                          fix="pass strings such as 'trainer.epochs=3', or keywords: trainer={'epochs': 3}")
    return listed + [f"{key}={text}" for key, text in _flatten(options)]


def _flatten(options: Mapping, prefix: str = "") -> Iterator[tuple[str, str]]:
    for key, value in options.items():
        if not isinstance(key, str):
            raise CvtoolError(f"config key {key!r} is not a string", where=prefix.rstrip(".") or "keywords",
                              fix="name keys by strings")
        dotted = prefix + key
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, dotted + ".")
        elif isinstance(value, Sweep):
            yield dotted, ",".join(value_text(v, dotted) for v in value.values)
        else:
            yield dotted, value_text(value, dotted)


def value_text(value: Any, key: str) -> str:
    """`value` in Hydra's override syntax: null, true/false, numbers, strings (quoted where Hydra would read
    something else), paths, [lists] and {dicts}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, Real):
        return repr(float(value))  # 0.001, 1e-05, inf, nan: all in Hydra's float syntax
    if isinstance(value, (str, os.PathLike)):
        return string_text(os.fspath(value))
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{value_text(v, f'{key}.{k}')}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_text(v, key) for v in value) + "]"
    raise CvtoolError(f"a {type(value).__name__} is not a config value", where=key,
                      fix="pass None, a bool, number, string, path, list or dict (sweep() only as a keyword's value)")


@lru_cache(maxsize=1)
def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def string_text(text: str) -> str:
    """`text` bare where Hydra reads it back as this same string (model=resnet18, paths.runs=/tmp/runs), else
    quoted: '3', 'true', 'null', 'a,b' (not a sweep), 'a=b'."""
    try:
        if _parser().parse_override(f"k=[{text}]").value() == [text]:  # one element, this string, here or in a list
            return text
    except Exception:  # noqa: BLE001 - not parseable bare: quote it
        pass
    # Inside quotes, Hydra reads \' as a quote; backslashes before a quote or at the end are doubled.
    escaped = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    escaped = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, escaped)
    return f"'{escaped}'"


def _single(results: list, multirun: bool) -> Any:
    return results if multirun else results[0]


def train(overrides: Overrides = None, *, multirun: bool = False, **options: Any) -> dict | list[dict]:
    """`cvtool train`: the run's final metrics (its metrics.json) plus "run_dir" (None on DDP ranks > 0); with
    `multirun`, a list of them, one per job."""
    from cvtool.commands import train as command

    return _single(command.main(render(overrides, **options), multirun=multirun), multirun)


def evaluate(overrides: Overrides = None, *, multirun: bool = False, **options: Any) -> dict | list[dict]:
    """`cvtool eval`: the metrics dict, exactly as written to metrics.json; its `run_dir` attribute is the run
    directory holding that file and plots/. With `multirun`, a list of them."""
    from cvtool.commands import evaluate as command

    return _single(command.main(render(overrides, **options), multirun=multirun), multirun)


def predict(overrides: Overrides = None, **options: Any) -> dict:
    """`cvtool predict`: {"num_images", "run_dir", "files"}: the result files `cvtool eval predictions=` reads
    (overlay images in run_dir/overlays)."""
    from cvtool.commands import predict as command

    return command.main(render(overrides, **options))[0]


def export(overrides: Overrides = None, **options: Any) -> dict:
    """`cvtool export`: {"path", "sidecar", "format", "exporter", "checks", ...} of the verified file."""
    from cvtool.commands import export as command

    return command.main(render(overrides, **options))[0]


def visualize(method: str, overrides: Overrides = None, **options: Any) -> dict:
    """`cvtool visualize METHOD`: what the method wrote ("run_dir" and per-method details)."""
    from cvtool.commands import visualize as command

    return command.main(method, render(overrides, **options))


def inspect(overrides: Overrides = None, **options: Any):
    """`cvtool inspect`: the per-layer Summary (layers, params, macs) that the table shows."""
    from cvtool.commands import inspect_model as command

    return command.main(render(overrides, **options))
