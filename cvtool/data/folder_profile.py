"""What an image folder looks like, measured cheaply: sizes and colour modes from the headers of a seeded sample of
files (no decoding), pixel mean/std from a decoded sample; and the settings `dataset=imagefolder` derives from them.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from cvtool.data.image_io import read_image
from cvtool.errors import CvtoolError

# PIL modes without colour: 1-bit, 8/16/32-bit gray, gray + alpha, float gray
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})


@dataclass(frozen=True)
class FolderProfile:
    """Header facts of a sample of image files."""

    widths: list[int]
    heights: list[int]
    modes: Counter
    unreadable: int  # sampled files whose header could not be read

    @property
    def count(self) -> int:
        return len(self.widths)

    @property
    def grayscale(self) -> bool:
        return all(mode in GRAY_MODES for mode in self.modes)

    @property
    def median_size(self) -> tuple[int, int]:
        """(median width, median height)."""
        return round(statistics.median(self.widths)), round(statistics.median(self.heights))

    @property
    def median_side(self) -> int:
        """Median shorter side: the side `Resize(int)` scales to the image size."""
        return round(statistics.median(map(min, self.widths, self.heights)))


@dataclass(frozen=True)
class FolderSettings:
    """What `dataset=imagefolder` uses for a folder, and why (`report()` is the one line the train log shows)."""

    image_size: int
    size_reason: str
    channels: int
    hflip: bool
    crop_scale: tuple[float, float]
    mean: list[float]
    std: list[float]
    stats_images: int  # images the mean/std were measured on (0: given in the config)
    median_size: tuple[int, int]

    def report(self) -> str:
        colour = "grayscale" if self.channels == 1 else "colour"
        low, high = self.crop_scale
        stats = f"mean/std from {self.stats_images} images" if self.stats_images else "mean/std as configured"
        width, height = self.median_size
        return (f"imagefolder: {self.image_size}x{self.image_size} px ({self.size_reason}; median image "
                f"{width}x{height}), {colour}, crop scale {low:g}-{high:g}, {'flip' if self.hflip else 'no flip'}, "
                f"{stats}")


def describe_sizes(profile: FolderProfile) -> str:
    """One line: min/median/max width and height, the colour modes and what they decode to."""
    def spread(values: list[int]) -> str:
        return f"{min(values)}/{round(statistics.median(values))}/{max(values)}"

    modes = ", ".join(f"{mode} x{count}" for mode, count in profile.modes.most_common())
    colour = "grayscale (1 channel)" if profile.grayscale else "colour (3 channels)"
    unreadable = f", {profile.unreadable} unreadable" if profile.unreadable else ""
    return (f"{profile.count} files, width {spread(profile.widths)}, height {spread(profile.heights)} px "
            f"(min/median/max); modes {modes}: {colour}{unreadable}")


def sample_files(files: Sequence[str], count: int, seed: int) -> list[str]:
    """A seeded sample of at most `count` files, in their listed order."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(files), size=min(len(files), count), replace=False))
    return [files[i] for i in picked.tolist()]


def read_headers(files: Sequence[str]) -> FolderProfile:
    """Sizes and modes from the file headers only (PIL opens lazily; no pixel is decoded)."""
    widths, heights, modes, unreadable = [], [], Counter(), 0
    for path in files:
        try:
            with Image.open(path) as image:
                width, height = image.size
                mode = image.mode
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            unreadable += 1
            continue
        widths.append(width)
        heights.append(height)
        modes[mode] += 1
    if not widths:
        raise CvtoolError(f"none of the {len(files)} sampled image files could be read",
                          where=str(files[0]) if files else None, fix="check the folder with `cvtool data check`")
    return FolderProfile(widths, heights, modes, unreadable)


def pixel_stats(files: Sequence[str], channels: int) -> tuple[list[float], list[float], int]:
    """Per-channel mean and std of [0, 1] pixel values over the decodable `files`, and how many were decoded."""
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    pixels, used = 0, 0
    for path in files:
        try:
            image = read_image(path, mode="GRAY" if channels == 1 else "RGB")
        except CvtoolError:
            continue  # `cvtool data check` and the readers report bad files; a sample does without them
        values = image.flatten(1).double() / 255.0
        total += values.sum(1)
        total_sq += values.square().sum(1)
        pixels += values.shape[1]
        used += 1
    if not used:
        raise CvtoolError("no sampled image could be decoded to measure mean/std",
                          where=str(files[0]) if files else None,
                          fix="check the folder with `cvtool data check`, or set dataset.mean and dataset.std")
    mean = total / pixels
    std = (total_sq / pixels - mean.square()).clamp_min(1e-12).sqrt()
    return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()], used


def derive_image_size(profile: FolderProfile, *, native_size: int | None, min_size: int, max_native: int,
                      large_size: int) -> tuple[int, str]:
    """(side, reason): the model's native input if it has one, else the median shorter side when it is at most
    `max_native`, else `large_size`; never below the model's smallest input `min_size`."""
    if native_size:
        size, reason = int(native_size), "model's native input"
    elif profile.median_side <= max_native:
        size, reason = profile.median_side, "median image side"
    else:
        size, reason = int(large_size), f"images larger than {max_native} px"
    if size < min_size:
        size, reason = min_size, "model's smallest input"
    return size, reason
