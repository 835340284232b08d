"""Index (label) PNGs: VOC palette "P" PNGs read as class indices (never converted to L/RGB), or 8/16-bit grey."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from cvtool.errors import CvtoolError

INDEX_MODES = ("P", "L", "I;16", "I", "1")


def voc_palette() -> list[int]:
    """The PASCAL VOC devkit colour map (bit-interleaved label bits), 256 RGB triples flattened."""
    palette = []
    for label in range(256):
        rgb, c = [0, 0, 0], label
        for bit in range(8):
            for channel in range(3):
                rgb[channel] |= ((c >> channel) & 1) << (7 - bit)
            c >>= 3
        palette.extend(rgb)
    return palette


VOC_PALETTE: list[int] = voc_palette()


def read_index_png(path: str | Path) -> np.ndarray:
    """(H, W) class indices of a palette or greyscale PNG."""
    try:
        with Image.open(path) as image:
            if image.mode not in INDEX_MODES:
                raise CvtoolError(f"{image.mode} image where a class-index mask is expected", where=str(path),
                                  fix="save one class index per pixel (palette 'P' or 8-bit 'L' PNG); convert "
                                      "colour masks by mapping each palette colour to its index")
            indices = np.asarray(image)
    except FileNotFoundError:
        raise CvtoolError("mask file not found", where=str(path), fix="every listed image needs its mask") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise CvtoolError(f"unreadable image ({err})", where=str(path), fix="re-save it as PNG") from None
    if indices.dtype.kind == "i" and indices.size and indices.min() < 0:
        raise CvtoolError(f"negative value {int(indices.min())} where class indices are expected", where=str(path),
                          fix="save one class index >= 0 per pixel (palette 'P' or 8-bit 'L' PNG)")
    return indices.astype(np.uint8) if indices.dtype == bool else indices


def write_index_png(path: str | Path, indices: np.ndarray) -> Path:
    """A VOC palette PNG of (H, W) indices in [0, 255] (255 = void)."""
    values = np.ascontiguousarray(indices, dtype=np.uint8)
    image = Image.frombytes("P", values.shape[::-1], values.tobytes())
    image.putpalette(VOC_PALETTE)
    image.save(path, format="PNG")
    return Path(path)
