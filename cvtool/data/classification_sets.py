"""Classification dataset readers: ImageFolder trees, MNIST IDX files, CIFAR-10 python batches, digits.

Every reader returns a ClassificationSet whose items are (tv_tensors.Image uint8 C×H×W, int label).
Splits: "train", and "val" = "test" (the held-out part: MNIST t10k, CIFAR test_batch, or a seeded stratified
`val_fraction` of each class where the data has no split of its own; "all" = no split there).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from itertools import compress
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from cvtool.data.archive_sets import CIFAR_FIX, MNIST_FIX, open_cifar10, open_mnist
from cvtool.data.image_io import IMAGE_EXTENSIONS, is_image_file, is_readable_image, read_image
from cvtool.data.splits import stratified_split
from cvtool.errors import CvtoolError

log = logging.getLogger(__name__)

KINDS = ("imagefolder", "mnist", "cifar10", "digits")
SPLIT_DIRS = ("train", "val", "test")
SEEDED_SPLITS = ("train", "val", "test", "all")
OFFICIAL_SPLITS = {"train": "train", "val": "test", "test": "test"}
DIGIT_CLASSES = [str(d) for d in range(10)]

class ClassificationSet(Dataset):
    """Items are (image, label): image a tv_tensors.Image uint8 C×H×W (after `transform`), label an int."""

    def __init__(
        self, classes: list[str], targets: list[int], channels: int, source: str, num_skipped: int = 0
    ):
        self.classes, self.targets, self.channels = classes, targets, channels
        self.source, self.num_skipped = source, num_skipped
        self.transform: Callable | None = None
        self.files: list[str] | None = None  # image file of each item, when the data are files
        self.in_memory_data = False  # True when the whole split is one tensor (no DataLoader workers needed)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = tv_tensors.Image(self.load_image(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[index]

    def load_image(self, index: int) -> torch.Tensor:
        """The raw uint8 C×H×W image of item `index`, before `transform`."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source})"


class ImageFileSet(ClassificationSet):
    """Reads image files lazily, decoding to RGB (channels=3) or grayscale (channels=1)."""

    def __init__(
        self, files: list[str], targets: list[int], classes: list[str], source: str, num_skipped: int,
        channels: int = 3,
    ):
        if channels not in (1, 3):
            raise CvtoolError(f"image files decode to 1 or 3 channels, not {channels}", where=source,
                              fix="set dataset.channels=1 (grayscale) or 3 (RGB)")
        super().__init__(classes, targets, channels, source, num_skipped)
        self.files = files

    def load_image(self, index: int) -> torch.Tensor:
        return read_image(self.files[index], mode="GRAY" if self.channels == 1 else "RGB")

    def in_memory(self) -> ClassificationSet:
        """The same split decoded once into one uint8 tensor (all images must share one size)."""
        images = [self.load_image(i) for i in range(len(self))]
        if len({tuple(image.shape) for image in images}) > 1:
            raise CvtoolError("dataset.cache=true needs images of one size", where=self.source,
                              fix="set dataset.cache=false (images are then decoded per item)")
        cached = TensorImageSet(torch.stack(images), self.targets, self.classes, f"{self.source}, in memory")
        cached.files = self.files
        return cached


class TensorImageSet(ClassificationSet):
    """Holds a whole split in memory as one uint8 N×C×H×W tensor."""

    def __init__(self, images: torch.Tensor, targets: list[int], classes: list[str], source: str):
        super().__init__(classes, targets, images.shape[1], source)
        self.images, self.in_memory_data = images, True

    def load_image(self, index: int) -> torch.Tensor:
        return self.images[index].clone()  # a copy, so an in-place transform cannot alter the dataset


def open_classification_set(
    kind: str,
    root: str | Path,
    split: str,
    *,
    transform: Callable | None = None,
    skip_invalid: bool = False,
    download: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: list[str] | None = None,
    cache: bool = False,
    channels: int = 3,
) -> ClassificationSet:
    """Open one split of a classification dataset of the given kind (one of KINDS) found under `root`.

    `cache=True` decodes an ImageFolder split into memory once (small datasets: no decoding per epoch);
    `channels` is what its files decode to (1 = grayscale, 3 = RGB).
    """
    root = Path(root) if root is not None else None
    if kind == "imagefolder":
        _require_root(root, fix="point it at a folder of <class>/<image> or <split>/<class>/<image> files")
        dataset = _open_imagefolder(root, split, classes, skip_invalid, val_fraction, seed, channels)
        if cache:
            dataset = dataset.in_memory()
    elif kind in ("mnist", "cifar10"):
        if not download:
            _require_root(root, fix=MNIST_FIX if kind == "mnist" else CIFAR_FIX)
        part = _official_part(split)
        dataset = (
            open_mnist(root, part, download) if kind == "mnist" else open_cifar10(root, part, download)
        )
        dataset = TensorImageSet(*dataset)
    elif kind == "digits":
        dataset = _open_digits(split, val_fraction, seed)
    else:
        raise CvtoolError(f"unknown dataset kind '{kind}'", fix=f"use one of: {', '.join(KINDS)}")
    if classes is not None and kind != "imagefolder" and list(classes) != dataset.classes:
        raise CvtoolError(
            f"class names {list(classes)} do not match the {kind} classes {dataset.classes}", where=str(root)
        )
    dataset.transform = transform
    return dataset


def dataset_stats(
    ds: ClassificationSet, max_items: int = 2000, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of pixel values in [0, 1] over a seeded sample of <= `max_items` images."""
    rng = np.random.default_rng(seed)
    indices = np.sort(rng.choice(len(ds), size=min(len(ds), max_items), replace=False))
    total = torch.zeros(ds.channels, dtype=torch.float64)
    total_sq = torch.zeros(ds.channels, dtype=torch.float64)
    count = 0
    for index in indices.tolist():
        pixels = ds.load_image(index).flatten(1).double() / 255.0
        total += pixels.sum(1)
        total_sq += pixels.square().sum(1)
        count += pixels.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    return mean.tolist(), std.tolist()


def _require_root(root: Path, fix: str) -> None:
    if not root.is_dir():
        raise CvtoolError("dataset root not found", where=str(root), fix=fix)


def _unknown_split(split: str, valid: Sequence[str], where: Path | None = None) -> CvtoolError:
    return CvtoolError(
        f"unknown split '{split}'", where=str(where) if where else None, fix=f"use one of: {', '.join(valid)}"
    )


def _official_part(split: str) -> str:
    if split not in OFFICIAL_SPLITS:
        raise _unknown_split(split, list(OFFICIAL_SPLITS))
    return OFFICIAL_SPLITS[split]


def _seeded_split(targets: list[int], split: str, val_fraction: float, seed: int) -> tuple[list[int], str]:
    """Indices of `split` ("all", "train" or the held-out "val" = "test") and its description for `source`."""
    if split == "all":
        return list(range(len(targets))), "all"
    train, val = stratified_split(targets, val_fraction, seed)
    description = f"{split} of a seeded split, val_fraction={val_fraction}, seed={seed}"
    return (train if split == "train" else val), description


# --- ImageFolder --------------------------------------------------------------------------------------------


def _open_imagefolder(
    root: Path, split: str, classes: list[str] | None, skip_invalid: bool, val_fraction: float, seed: int,
    channels: int = 3,
) -> ClassificationSet:
    if (root / split).is_dir():
        folder = root / split
        files, targets, names = _scan_class_dirs(folder, classes)
        description = f"ImageFolder {folder}"
    else:
        present = [name for name in SPLIT_DIRS if (root / name).is_dir()]
        if present:
            raise _unknown_split(split, present, where=root)
        if split not in SEEDED_SPLITS:
            raise _unknown_split(split, SEEDED_SPLITS, where=root)
        files, targets, names = _scan_class_dirs(root, classes)
        keep, split_description = _seeded_split(targets, split, val_fraction, seed)
        files, targets = [files[i] for i in keep], [targets[i] for i in keep]
        description = f"ImageFolder {root} [{split_description}]"
    num_skipped = 0
    if skip_invalid:
        files, targets, num_skipped = _drop_unreadable(files, targets)
    if not files:
        raise CvtoolError(f"no readable images for split '{split}'", where=str(root))
    source = f"{description} ({len(names)} classes, {len(files)} images)"
    return ImageFileSet(files, targets, names, source, num_skipped, channels)


def _scan_class_dirs(folder: Path, classes: list[str] | None) -> tuple[list[str], list[int], list[str]]:
    """Image paths and labels of folder/<class>/**/<image>, classes sorted by name unless given."""
    found = sorted(
        entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith(".")
    )
    if classes is None:
        if not found:
            raise CvtoolError(
                "no class folders found", where=str(folder), fix="expected <class>/<image> files"
            )
        if len(found) < 2:  # one class: every prediction is right, a run would report 100 % and loss 0
            raise CvtoolError(
                f"classification needs at least 2 classes, found 1 class folder: {found[0]}",
                where=str(folder),
                fix="add a <class>/ folder of images for each class to tell apart",
            )
        names = found
    else:
        names = list(classes)
        unexpected = [name for name in found if name not in names]
        missing = [name for name in names if name not in found]
        if unexpected or missing:
            raise CvtoolError(
                "class folders do not match the class list",
                where=str(folder),
                fix=f"unexpected folders: {unexpected or 'none'}; missing folders: {missing or 'none'}",
            )
    files: list[str] = []
    targets: list[int] = []
    for label, name in enumerate(names):
        images = _list_images(folder / name)
        if not images:
            raise CvtoolError(
                "class folder has no images",
                where=str(folder / name),
                fix=f"add images ({' '.join(sorted(IMAGE_EXTENSIONS))}) or remove the folder",
            )
        files += images
        targets += [label] * len(images)
    return files, targets, names


def _list_images(folder: Path) -> list[str]:
    images = []
    for directory, subdirs, names in os.walk(folder, followlinks=True):
        subdirs[:] = [name for name in subdirs if not name.startswith(".")]
        images += [os.path.join(directory, name) for name in names if is_image_file(name)]
    return sorted(images)


def _drop_unreadable(files: list[str], targets: list[int]) -> tuple[list[str], list[int], int]:
    readable = [is_readable_image(path) for path in files]
    bad = [path for path, ok in zip(files, readable, strict=True) if not ok]
    if bad:
        shown = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
        log.warning("skipped %d corrupt or unreadable image file(s): %s", len(bad), shown)
    return list(compress(files, readable)), list(compress(targets, readable)), len(bad)


# --- scikit-learn digits ------------------------------------------------------------------------------------


def _open_digits(split: str, val_fraction: float, seed: int) -> ClassificationSet:
    """scikit-learn's bundled 1,797 8×8 handwritten digits (values 0..16, scaled to 0..255); no download."""
    from sklearn.datasets import load_digits  # imported here: slow, and only this reader needs it

    if split not in SEEDED_SPLITS:
        raise _unknown_split(split, SEEDED_SPLITS)
    digits = load_digits()
    images = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    targets = [int(t) for t in digits.target]
    keep, description = _seeded_split(targets, split, val_fraction, seed)
    images, targets = images[keep], [targets[i] for i in keep]
    source = f"scikit-learn digits [{description}] (10 classes, {len(targets)} images)"
    return TensorImageSet(images, targets, DIGIT_CLASSES, source)
