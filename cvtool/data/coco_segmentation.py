"""COCO segmentations (polygons, uncompressed and compressed RLE) checked without decoding the masks.

pycocotools trusts its input: a compressed RLE whose counts do not cover exactly height x width pixels is read past
its end (garbage metrics) or refused mid-evaluation with a traceback. These checks find such masks up front.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

MAX_PIXELS = 2**32  # RLE counts are 32-bit in pycocotools
MAX_GROUP = 12  # characters of one LEB128-style count: 60 bits, far above any 32-bit count


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def image_size_problem(height: Any, width: Any) -> str | None:
    """Why (height, width) is not an image size, or None."""
    if not (is_integer(height) and is_integer(width) and height > 0 and width > 0):
        return f"height/width {height!r}/{width!r} are not positive integers"
    if height * width >= MAX_PIXELS:
        return f"{height}x{width} pixels exceed COCO's 2^32-pixel masks"
    return None


def compressed_counts(text: str) -> np.ndarray | None:
    """The run lengths of a compressed RLE string (pycocotools' rleFrString), or None when it is malformed: a
    character outside '0'..'o', a count cut off at the end, or a negative run."""
    codes = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return np.zeros(0, np.int64)
    if codes.min() < 0 or codes.max() > 63 or codes[-1] & 0x20:
        return None
    ends = np.flatnonzero((codes & 0x20) == 0)  # the last character of each count
    starts = np.concatenate([[0], ends[:-1] + 1])
    lengths = ends - starts + 1
    if lengths.max() > MAX_GROUP:
        return None
    position = np.arange(codes.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    values -= np.where(codes[ends] & 0x10, np.int64(1) << (5 * lengths), 0)  # sign bit of the last 5-bit group
    # each count from the fourth on is stored as the difference to the count two places before it
    for first in (1, 2):
        values[first::2] = np.cumsum(values[first::2])
    return values if values.min() >= 0 else None


def rle_problem(rle: Any, shape: tuple[int, int] | None) -> str | None:
    """Why `rle` is not an RLE {size: [height, width], counts} of a mask of `shape` (when known), or None. Counts
    are a compressed string or (uncompressed) a list of run lengths; either way they must add up to h x w."""
    if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
        return "is not an RLE {size, counts}"
    size, counts = rle["size"], rle["counts"]
    if not (isinstance(size, list) and len(size) == 2) or image_size_problem(*size):
        return f"has an RLE 'size' {size!r} that is not [height, width]"
    if shape is not None and list(size) != list(shape):
        return f"has an RLE 'size' {size} that differs from the image's [height, width] {list(shape)}"
    if isinstance(counts, str):
        runs = compressed_counts(counts)
        if runs is None:
            return f"has a malformed RLE 'counts' {_short(counts)}"
        total = int(runs.sum())
    elif isinstance(counts, list) and all(is_integer(c) and c >= 0 for c in counts):
        total = sum(counts)
    else:
        return f"has RLE 'counts' {_short(counts)} that are neither a string nor a list of run lengths"
    if total != size[0] * size[1]:
        return (f"has a malformed RLE 'counts' {_short(counts)}: its runs cover {total} pixels, not "
                f"{size[0]}x{size[1]} = {size[0] * size[1]}")
    return None


def polygon_problem(polygons: Any) -> str | None:
    """Why `polygons` is not a non-empty list of polygons [x1, y1, x2, y2, x3, y3, ...], or None."""
    if not (isinstance(polygons, list) and polygons):
        return "has an empty segmentation (a polygon list needs at least one polygon)"
    for k, polygon in enumerate(polygons):
        if not (isinstance(polygon, list) and len(polygon) >= 6 and len(polygon) % 2 == 0 and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in polygon)):
            return f"has polygon {k} {_short(polygon)} that is not [x1, y1, x2, y2, x3, y3, ...] (finite numbers)"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
