"""Stored classification predictions: logits.npy (N x C) + targets.npy (N), or a CSV with a `target` column and
`logit_0..logit_{C-1}` columns (optional `index`; other columns such as file/pred/class/score are ignored)."""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from tokenize import TokenError

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write, atomic_write_text

LOGIT_COLUMN = re.compile(r"^logit_(\d+)$")


def _load_npy(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise CvtoolError(f"{what} file not found", where=str(path), fix="check the path")
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(f)
            stored = path.stat().st_size - f.tell()
            if not dtype.hasobject and math.prod(shape) * dtype.itemsize > stored:  # before allocating it
                raise ValueError(f"its header promises shape {shape} of {dtype} but only {stored} bytes follow")
            f.seek(0)
            return np.load(f, allow_pickle=False)
    # a garbled header fails inside numpy's parser (ast/tokenize) with any of these
    except (ValueError, OSError, EOFError, SyntaxError, TokenError) as err:
        raise CvtoolError(f"not a readable .npy array ({err})", where=str(path),
                          fix="save it with numpy.save (numeric array, no pickled objects)") from None


def _check_targets(targets: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    if targets.dtype.kind not in "iuf" or (targets.dtype.kind == "f" and not np.all(np.mod(targets, 1) == 0)):
        raise CvtoolError(f"targets must be integer class indices, got dtype {targets.dtype}", where=where,
                          fix="store one class index per sample")
    bad = np.flatnonzero((targets < 0) | (targets >= num_classes))
    if bad.size:
        raise CvtoolError(f"target {targets[bad[0]]} of sample {bad[0]} is outside [0, {num_classes})", where=where,
                          fix=f"the logits have {num_classes} columns: targets must be 0..{num_classes - 1}")
    return targets.astype(np.int64)


def _check_logits(logits: np.ndarray, where: str) -> np.ndarray:
    if logits.ndim != 2 or logits.shape[1] < 1 or logits.dtype.kind not in "iuf":
        raise CvtoolError(f"logits must be a numeric N x C array, got shape {logits.shape} dtype {logits.dtype}",
                          where=where, fix="store one row of class scores per sample")
    if len(logits) == 0:
        raise CvtoolError("the predictions hold no samples", where=where, fix="store one row per evaluated sample")
    bad = np.flatnonzero(~np.isfinite(logits).all(axis=1))
    if bad.size:
        raise CvtoolError(f"sample {bad[0]} has a non-finite logit", where=where, fix="store finite scores")
    return logits.astype(np.float64)


def read_npy_predictions(predictions: str | Path, targets: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    predictions = Path(predictions)
    if targets is None:
        raise CvtoolError(".npy logits need their targets", where="targets",
                          fix="pass targets=PATH.npy (one class index per row of the logits)")
    logits = _check_logits(_load_npy(predictions, "logits"), str(predictions))
    labels = _load_npy(Path(targets), "targets")
    if labels.ndim != 1 or len(labels) != len(logits):
        raise CvtoolError(f"targets have shape {labels.shape} but the logits have {len(logits)} rows",
                          where=str(targets), fix="store one class index per row of the logits")
    return logits, _check_targets(labels, logits.shape[1], str(targets))


def read_csv_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise CvtoolError("predictions file not found", where=str(path), fix="check the path")
    try:
        rows = list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))
    except UnicodeDecodeError as err:
        raise CvtoolError(f"not a UTF-8 text file (byte {err.start})", where=str(path),
                          fix="pass a predictions CSV (target,logit_0,...)") from None
    except csv.Error as err:
        raise CvtoolError(f"malformed CSV ({err})", where=str(path), fix="repair or regenerate the CSV") from None
    if not rows:
        raise CvtoolError("empty CSV", where=str(path), fix="write a header with target,logit_0,...")
    header = [h.strip() for h in rows[0]]
    logit_cols = {int(m[1]): i for i, h in enumerate(header) if (m := LOGIT_COLUMN.match(h))}
    num_classes = len(logit_cols)
    if "target" not in header or num_classes == 0 or sorted(logit_cols) != list(range(num_classes)):
        raise CvtoolError("CSV header needs a 'target' column and logit_0..logit_{C-1} columns", where=f"{path}:1",
                          fix="write one column per class logit (logit_0, logit_1, ...) and the true class index")
    columns = [header.index("target"), *(logit_cols[k] for k in range(num_classes))]
    has_index = "index" in header
    if has_index:
        columns.append(header.index("index"))
    values = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise CvtoolError(f"{len(row)} fields instead of {len(header)}", where=f"{path}:{n}",
                              fix="every row needs a value for every header column")
        try:
            values.append([float(row[c]) for c in columns])
        except ValueError:
            raise CvtoolError("target/logit/index value is not a number", where=f"{path}:{n}",
                              fix="write numbers only in those columns") from None
    table = np.array(values, dtype=np.float64).reshape(-1, len(columns))
    if has_index:
        index = table[:, -1]
        if len(np.unique(index)) != len(index):
            raise CvtoolError("the 'index' column has duplicate values", where=str(path),
                              fix="each sample must appear once")
        table = table[np.argsort(index, kind="stable")]
    logits = _check_logits(table[:, 1:1 + num_classes], str(path))
    return logits, _check_targets(table[:, 0], num_classes, str(path))


def read_classification_predictions(predictions: str | Path,
                                    targets: str | Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(logits N x C float64, targets N int64) from logits.npy + targets.npy or a predictions CSV."""
    suffix = Path(predictions).suffix.lower()
    if suffix == ".npy":
        return read_npy_predictions(predictions, targets)
    if suffix == ".csv":
        if targets is not None:
            raise CvtoolError("targets= is for .npy logits; a CSV carries its own 'target' column", where="targets",
                              fix="drop targets= or pass predictions=logits.npy")
        return read_csv_predictions(predictions)
    raise CvtoolError(f"unknown classification predictions format {suffix or '(no suffix)'!r}",
                      where=str(predictions), fix="pass predictions=logits.npy targets=targets.npy or predictions="
                                                  "preds.csv")


def write_classification_predictions(directory: Path, files: list[str], logits: np.ndarray,
                                     targets: np.ndarray | None, class_names: list[str]) -> list[Path]:
    """predictions.csv (index, file, [target], pred, class, score, logit_*), logits.npy and targets.npy: the
    formats `cvtool eval predictions=...` reads back."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    pred = logits.argmax(axis=1)
    header = ["index", "file", *(["target"] if targets is not None else []), "pred", "class", "score",
              *(f"logit_{k}" for k in range(logits.shape[1]))]
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    for i, file in enumerate(files):
        writer.writerow([i, file, *([int(targets[i])] if targets is not None else []), int(pred[i]),
                         class_names[pred[i]], repr(float(probs[i, pred[i]])), *map(repr, logits[i].tolist())])
    atomic_write_text(directory / "predictions.csv", text.getvalue())
    atomic_write(directory / "logits.npy", lambda f: np.save(f, logits))
    written = [directory / "predictions.csv", directory / "logits.npy"]
    if targets is not None:
        atomic_write(directory / "targets.npy", lambda f: np.save(f, np.asarray(targets, dtype=np.int64)))
        written.append(directory / "targets.npy")
    return written
