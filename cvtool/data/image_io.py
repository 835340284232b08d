"""Image file decoding to uint8 tensors: torchvision's fast decoders, PIL for the formats they lack."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.io import ImageReadMode, decode_image
from torchvision.transforms.v2.functional import to_dtype

from cvtool.errors import CvtoolError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
CORRUPT_FIX = "delete or replace it, or pass data.skip_invalid=true to skip bad files"

_PIL_MODES = {"RGB": "RGB", "GRAY": "L"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_image_file(path: str | Path) -> bool:
    """True for a non-hidden file name with one of IMAGE_EXTENSIONS (case-insensitive)."""
    path = Path(path)
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def read_image(path: str | Path, mode: Literal["RGB", "GRAY"] = "RGB") -> torch.Tensor:
    """Decode an image file to a uint8 C×H×W tensor (C = 3 for RGB, 1 for GRAY), EXIF orientation applied.

    Raises CvtoolError naming the file when it cannot be read or decoded.
    """
    if mode not in _PIL_MODES:
        raise ValueError(f"mode must be one of {sorted(_PIL_MODES)}, got {mode!r}")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise _corrupt(path) from exc
    try:
        image = _decode_torchvision(data, mode)
    except RuntimeError:
        try:
            image = _decode_pil(data, mode)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise _corrupt(path) from exc
    if image.dtype != torch.uint8:  # 16-bit PNG
        image = to_dtype(image, torch.uint8, scale=True)
    return image


def is_readable_image(path: str | Path) -> bool:
    """Quick integrity check: PNGs by their chunk CRCs (PIL's verify), other files by a full `read_image`."""
    try:
        with open(path, "rb") as f:
            is_png = f.read(len(_PNG_SIGNATURE)) == _PNG_SIGNATURE
        if is_png:
            # The CRCs cover the compressed pixels too: nearly as strict as decoding, and ~4x faster.
            with Image.open(path) as pil:
                pil.verify()
        else:
            read_image(path)
    except (CvtoolError, OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


def _corrupt(path: str | Path) -> CvtoolError:
    return CvtoolError("image file is corrupt or unreadable", where=str(path), fix=CORRUPT_FIX)


def _decode_torchvision(data: np.ndarray, mode: str) -> torch.Tensor:
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec and warns on every call.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
        image = decode_image(torch.from_numpy(data), mode=ImageReadMode.RGB, apply_exif_orientation=True)
    # Converting here rather than asking the decoder for GRAY: its WebP decoder ignores GRAY.
    return rgb_to_gray(image) if mode == "GRAY" else image


def rgb_to_gray(image: torch.Tensor) -> torch.Tensor:
    """ITU-R 601-2 luma in PIL's exact integer arithmetic, so gray sources round-trip losslessly."""
    r, g, b = image.to(torch.int64).unbind(0)
    return ((r * 19595 + g * 38470 + b * 7471 + 32768) >> 16).unsqueeze(0).to(image.dtype)


def _decode_pil(data: np.ndarray, mode: str) -> torch.Tensor:
    with Image.open(io.BytesIO(data.tobytes())) as pil:
        pil = ImageOps.exif_transpose(pil)
        if pil.mode.startswith("I;16"):  # 16-bit gray: PIL's convert() would clip instead of scaling
            pil = Image.fromarray((np.asarray(pil, dtype=np.uint16) >> 8).astype(np.uint8))
        array = np.asarray(pil.convert(_PIL_MODES[mode]))
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
