"""Stored embeddings: embeddings.npy (float32, N x D) and index.csv beside it (`index,path,identity`, one row per
embedding in array order; identity empty when unknown)."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvtool.data.logits_files import _load_npy
from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write, atomic_write_text

ARRAY, INDEX = "embeddings.npy", "index.csv"
HEADER = ["index", "path", "identity"]


def write_embeddings(directory: str | Path, embeddings: np.ndarray, names: Sequence[str],
                     identities: Sequence[str] | None) -> list[Path]:
    """Atomically write `directory`/embeddings.npy (float32) and index.csv (row i: i, names[i], identities[i] or
    empty); returns both paths."""
    directory = Path(directory)
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or len(names) != len(embeddings) or (identities is not None and
                                                                  len(identities) != len(embeddings)):
        raise ValueError(f"{embeddings.shape} embeddings for {len(names)} names")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(HEADER)
    for i, name in enumerate(names):
        writer.writerow([i, name, "" if identities is None else identities[i]])
    return [atomic_write(directory / ARRAY, lambda f: np.save(f, embeddings)),
            atomic_write_text(directory / INDEX, text.getvalue())]


def _check_array(array: np.ndarray, where: str) -> np.ndarray:
    if array.ndim != 2 or array.dtype.kind != "f" or array.shape[0] < 1 or array.shape[1] < 1:
        raise CvtoolError(f"embeddings must be a non-empty 2-D float array (N x D), got shape {array.shape} dtype "
                          f"{array.dtype}", where=where, fix="store one float row per image (numpy.save)")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise CvtoolError(f"embedding {bad[0]} has a non-finite value", where=where,
                          fix="store finite embeddings (a NaN usually means the model diverged)")
    return array


def _read_index(path: Path, rows: int) -> tuple[list[str], list[str | None]]:
    if not path.is_file():
        raise CvtoolError("index.csv not found beside the embeddings", where=str(path),
                          fix="keep the index.csv written with embeddings.npy in the same folder")
    try:
        table = list(csv.reader(io.StringIO(path.read_bytes().decode("utf-8"), newline="")))
    except (UnicodeDecodeError, csv.Error) as err:
        raise CvtoolError(f"not a readable UTF-8 CSV ({err})", where=str(path),
                          fix="regenerate it with the embeddings") from None
    if not table or [h.strip() for h in table[0]] != HEADER:
        raise CvtoolError(f"the header is not {','.join(HEADER)}", where=f"{path}:1",
                          fix="regenerate it with the embeddings")
    names, identities = [], []
    for n, row in enumerate(table[1:], start=2):
        if not row:
            continue
        if len(row) != len(HEADER) or row[0].strip() != str(len(names)):
            raise CvtoolError(f"expected `{len(names)},path,identity`, got {','.join(row)!r}", where=f"{path}:{n}",
                              fix="one row per embedding in array order: index (0, 1, ...), image path, identity")
        names.append(row[1])
        identities.append(row[2] or None)
    if len(names) != rows:
        raise CvtoolError(f"{len(names)} rows but the embeddings array has {rows}", where=str(path),
                          fix="keep the index.csv written with that embeddings.npy")
    return names, identities


def read_embeddings(path: str | Path) -> tuple[np.ndarray, list[str], list[str | None]]:
    """(embeddings N x D as stored, image paths, identities (None where unknown)) from embeddings.npy, or a
    directory holding it, and the index.csv beside it."""
    path = Path(path)
    if path.is_dir():
        path = path / ARRAY
    array = _check_array(_load_npy(path, "embeddings"), str(path))
    names, identities = _read_index(path.parent / INDEX, len(array))
    return array, names, identities
