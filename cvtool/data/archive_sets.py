"""Readers of the standard archive formats: MNIST IDX files and CIFAR-10 python batches (parsed safely)."""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cvtool.errors import CvtoolError

Split = tuple[torch.Tensor, list[int], list[str], str]  # uint8 N×C×H×W images, labels, class names, source

MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MNIST_FIX = (
    "expected train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
    "t10k-labels-idx1-ubyte[.gz] there; put them there or pass dataset.download=true"
)
CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
CIFAR_FIX = (
    "expected data_batch_1..data_batch_5, test_batch and batches.meta (the python version, "
    "cifar-10-python.tar.gz) in ROOT/cifar-10-batches-py/ or ROOT/; "
    "put them there or pass dataset.download=true"
)


# --- MNIST --------------------------------------------------------------------------------------------------


def open_mnist(root: Path, part: str, download: bool) -> Split:
    """MNIST IDX files (optionally .gz) under root or root/MNIST/raw."""
    names = MNIST_FILES[part]
    paths = _find_mnist_files(root, names)
    if paths is None and download:
        _download("MNIST", root, part)
        paths = _find_mnist_files(root, names)
    if paths is None:
        raise CvtoolError("MNIST files not found", where=str(root), fix=MNIST_FIX)
    images = _read_idx(paths[0], ndim=3)
    labels = _read_idx(paths[1], ndim=1)
    if len(images) != len(labels) or (labels.size and labels.max() > 9):
        raise CvtoolError(
            f"{paths[1].name} does not fit {paths[0].name}: "
            f"{len(labels)} labels (max {labels.max(initial=0)}) for {len(images)} images",
            where=str(paths[1].parent),
        )
    source = f"MNIST {paths[0].parent} [{part}] (10 classes, {len(images)} images)"
    return torch.from_numpy(images.copy()).unsqueeze(1), labels.tolist(), [str(d) for d in range(10)], source


def _find_mnist_files(root: Path, names: Sequence[str]) -> list[Path] | None:
    for folder in (root, root / "MNIST" / "raw"):
        paths = [next((p for p in (folder / n, folder / f"{n}.gz") if p.is_file()), None) for n in names]
        if all(paths):
            return paths
    return None


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes: magic 0x0000_08_<ndim>, big-endian uint32 sizes, then the data."""
    fix = "replace it with the original MNIST file"
    not_idx = CvtoolError(f"{path.name} is not an MNIST IDX file", where=str(path), fix=fix)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise not_idx from exc
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise not_idx
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) != header + int(np.prod(shape)):
        raise not_idx
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _download(dataset: str, root: Path, part: str) -> None:
    from torchvision import datasets  # imported here: pulls in much that the offline readers never need

    try:
        getattr(datasets, dataset)(str(root), train=part == "train", download=True)
    except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
        raise CvtoolError(
            f"{dataset} download failed (no network?): {exc}",
            where=str(root),
            fix="check the connection, or put the files there by hand",
        ) from exc


# --- CIFAR-10 -----------------------------------------------------------------------------------------------


def open_cifar10(root: Path, part: str, download: bool) -> Split:
    """CIFAR-10 python-version batches under root/cifar-10-batches-py or root."""
    names = (*CIFAR_FILES[part], "batches.meta")
    folder = _find_cifar_folder(root, names)
    if folder is None and download:
        _download("CIFAR10", root, part)
        folder = _find_cifar_folder(root, names)
    if folder is None:
        raise CvtoolError("CIFAR-10 files not found", where=str(root), fix=CIFAR_FIX)
    batches = [_read_cifar_batch(folder / name) for name in CIFAR_FILES[part]]
    data = np.concatenate([batch["data"] for batch in batches])
    labels = [label for batch in batches for label in batch["labels"]]
    classes = _read_cifar_meta(folder / "batches.meta")
    # Each row is the 1024 red values, then green, then blue, each plane row-major 32×32.
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    source = f"CIFAR-10 {folder} [{part}] (10 classes, {len(labels)} images)"
    return images, labels, classes, source


def _find_cifar_folder(root: Path, names: Sequence[str]) -> Path | None:
    for folder in (root / "cifar-10-batches-py", root):
        if all((folder / name).is_file() for name in names):
            return folder
    return None


# The globals a pickled numpy array needs, numpy 1.x and 2.x spellings, protocols 2 to 5.
_PICKLE_ALLOWED = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR batch files hold (dicts, lists, str, numbers, numpy arrays): runs no code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _load_cifar_pickle(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            content = _ArrayUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, OSError) as exc:
        raise _not_cifar(path, str(exc)) from exc
    if not isinstance(content, dict):
        raise _not_cifar(path, f"a pickled {type(content).__name__}, not a dict")
    return content


def _read_cifar_batch(path: Path) -> dict:
    batch = _load_cifar_pickle(path)
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise _not_cifar(path, "'data' is not an N x 3072 uint8 array")
    if not isinstance(labels, list) or len(labels) != len(data) or any(not 0 <= int(x) <= 9 for x in labels):
        raise _not_cifar(path, f"'labels' is not a list of {len(data)} labels in 0..9")
    return {"data": data, "labels": [int(x) for x in labels]}


def _read_cifar_meta(path: Path) -> list[str]:
    names = _load_cifar_pickle(path).get("label_names")
    if not isinstance(names, list) or len(names) != 10 or not all(isinstance(n, str) for n in names):
        raise _not_cifar(path, "'label_names' is not a list of 10 names")
    return names


def _not_cifar(path: Path, reason: str) -> CvtoolError:
    return CvtoolError(
        f"{path.name} is not a CIFAR-10 python-version file ({reason})",
        where=str(path),
        fix="replace it with the file from cifar-10-python.tar.gz",
    )
