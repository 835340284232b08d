"""Identity folders in the LFW layout (`root/<identity>/<identity>_0001.jpg`): scanning, image numbers and the
split by identity. numpy and the standard library only (stored embeddings are evaluated without torch)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError

LAYOUT = "root/<identity>/<identity>_0001.jpg (the LFW layout: one folder per identity)"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})


@dataclass(frozen=True)
class IdentityImage:
    identity: str
    number: int  # the image's number: <identity>_<number>.jpg, else its 1-based position in the folder
    path: str


def split_identities(names: list[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(training, test) identity names, disjoint and each sorted: a seeded random `test_fraction` of the identities
    (at least one, and at least one left for training) is held out for testing."""
    ordered = sorted(names)
    count = min(len(ordered) - 1, max(1, round(len(ordered) * test_fraction)))
    chosen = set(np.random.default_rng(seed).permutation(len(ordered))[:count].tolist())
    test = [name for i, name in enumerate(ordered) if i in chosen]
    train = [name for i, name in enumerate(ordered) if i not in chosen]
    return train, test


def scan_identities(root: str | Path) -> dict[str, list[IdentityImage]]:
    """identity -> its images (sorted by number), for every sub-folder of `root` that holds images."""
    root = Path(root)
    if not root.is_dir():
        raise CvtoolError("identity folder not found", where=str(root), fix=f"expected {LAYOUT}")
    found: dict[str, list[IdentityImage]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(str(p) for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if files:
            found[folder.name] = numbered(folder.name, files)
    if not found:
        raise CvtoolError("no identity folders with images", where=str(root), fix=f"expected {LAYOUT}")
    return found


def numbered(identity: str, files: list[str]) -> list[IdentityImage]:
    """The images of one identity numbered as LFW names them (<identity>_0005.jpg is number 5); files named
    otherwise are numbered by their position in the sorted list."""
    images, seen = [], {}
    for position, path in enumerate(files, start=1):
        number = image_number(identity, path) or position
        if number in seen:
            raise CvtoolError(f"two images of {identity} have number {number}: {seen[number]} and {path}",
                              where=path, fix="rename one (LFW numbering: <identity>_0001.jpg, _0002, ...)")
        seen[number] = path
        images.append(IdentityImage(identity, number, path))
    return sorted(images, key=lambda image: image.number)


def image_number(identity: str, path: str) -> int | None:
    """5 for `<identity>_0005.<ext>`; None for a file named otherwise."""
    match = re.fullmatch(rf"{re.escape(identity)}_(\d+)", os.path.splitext(os.path.basename(path))[0])
    return int(match.group(1)) if match else None
