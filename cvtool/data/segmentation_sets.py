"""Semantic segmentation datasets: (image, index mask) pairs from a VOC devkit or from an images + masks folder.

Masks are index PNGs (VOC palette "P" or 8-bit grey) read as class indices; `ignore_index` (255, void) is left
out of the loss and the metrics. Every mask is checked when a split is opened (missing, colour instead of indices,
size different from its image, values outside [0, num_classes) and not void): training refuses such items, or
skips them with `data.skip_invalid=true`, and `cvtool data check` lists them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cvtool.errors import CvtoolError

from .image_io import is_image_file, read_image
from .index_png import read_index_png

log = logging.getLogger("cvtool.data")


@dataclass
class SegmentationItem:
    image_id: str
    image: Path
    mask: Path | None  # None: no ground truth (predict on plain images)


class SegmentationSet(Dataset):
    """Items are (uint8 image C×H×W, int64 mask H×W); without ground truth the mask is all `ignore_index`."""

    def __init__(self, items: list[SegmentationItem], classes: list[str], source: str, *, ignore_index: int | None,
                 masks: list[np.ndarray] | None = None, num_skipped: int = 0):
        self.items, self.classes, self.source, self.num_skipped = items, classes, source, num_skipped
        self.ignore_index = 255 if ignore_index is None else ignore_index  # fill value of padding
        self.masks = masks  # decoded while checking (kept when the split is cached)
        self.images: list[torch.Tensor] | None = None
        self.transform: Callable | None = None
        self.files = [str(item.image) for item in items]
        self.in_memory_data = False

    def cache(self) -> SegmentationSet:
        """Decode every image (and mask) once and keep them in memory (small datasets)."""
        self.images = [read_image(item.image) for item in self.items]
        if self.masks is None:
            self.masks = [self._read_mask(i) for i in range(len(self.items))]
        self.in_memory_data = True
        return self

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: list[int]) -> SegmentationSet:
        part = SegmentationSet([self.items[i] for i in indices], self.classes, f"{self.source}, subset of "
                               f"{len(indices)}", ignore_index=self.ignore_index,
                               masks=None if self.masks is None else [self.masks[i] for i in indices])
        part.transform = self.transform
        if self.images is not None:
            part.images, part.in_memory_data = [self.images[i] for i in indices], True
        return part

    def _read_mask(self, index: int) -> np.ndarray | None:
        mask = self.items[index].mask
        return None if mask is None else read_index_png(mask)

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, tv_tensors.Mask]:
        item = self.items[index]
        image = tv_tensors.Image(self.images[index] if self.images is not None else read_image(item.image))
        mask = self.masks[index] if self.masks is not None else self._read_mask(index)
        mask = (torch.full(image.shape[-2:], self.ignore_index, dtype=torch.int64) if mask is None
                else torch.from_numpy(mask.astype(np.int64)))
        if mask.shape != image.shape[-2:]:
            raise CvtoolError(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image.shape[2]}x"
                              f"{image.shape[1]}", where=str(item.mask), fix="masks must have their image's size")
        mask = tv_tensors.Mask(mask)
        if self.transform is not None:
            image, mask = self.transform(image, mask)
        return image, mask

    def collate(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """Stack images and masks padded (bottom/right) to the largest size: images with 0, masks with void."""
        sizes = [tuple(image.shape[-2:]) for image, _ in batch]
        height, width = max(s[0] for s in sizes), max(s[1] for s in sizes)

        def pad(x: torch.Tensor, value: int) -> torch.Tensor:
            return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]), value=value)

        images = torch.stack([pad(image.as_subclass(torch.Tensor), 0) for image, _ in batch])
        masks = torch.stack([pad(mask.as_subclass(torch.Tensor), self.ignore_index) for _, mask in batch])
        return images, masks, sizes


def mask_problems(item: SegmentationItem, mask: np.ndarray | None, num_classes: int,
                  ignore_index: int | None) -> list[str]:
    """A mask whose size differs from its image's, or with values that are neither a class nor void."""
    if mask is None:
        return []
    problems = []
    with Image.open(item.image) as image:
        width, height = image.size
    if mask.shape != (height, width):
        problems.append(f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {width}x{height} ({item.mask})")
    values = np.unique(mask)
    bad = values[(values >= num_classes) & (values != (ignore_index if ignore_index is not None else -1))]
    if len(bad):
        void = f" ∪ {{{ignore_index}}}" if ignore_index is not None else ""
        problems.append(f"mask values {', '.join(str(int(v)) for v in bad[:5])} outside [0, {num_classes}){void} "
                        f"({item.mask})")
    return problems


def _checked_mask(item: SegmentationItem, num_classes: int, ignore_index: int | None,
                  problems: list[str]) -> np.ndarray | None:
    """The decoded mask of `item`, or None after adding its problems (missing, unreadable, colour, bad values)."""
    if item.mask is None or not item.mask.is_file():
        problems.append(f"mask file missing ({item.mask})" if item.mask else f"no mask for {item.image}")
        return None
    if not item.image.is_file():
        problems.append(f"image file missing ({item.image})")
        return None
    try:
        mask = read_index_png(item.mask)
    except CvtoolError as err:
        problems.append(err.line())
        return None
    found = mask_problems(item, mask, num_classes, ignore_index)
    problems.extend(found)
    return None if found else mask


def voc_seg_items(root: Path, split: str) -> list[SegmentationItem]:
    """ImageSets/Segmentation/<split>.txt of a devkit year directory: JPEGImages/<id>.jpg + SegmentationClass/."""
    from .voc_annotations import check_devkit_root, read_split

    root = check_devkit_root(root, "SegmentationClass")
    return [SegmentationItem(i, root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png")
            for i in read_split(root, "Segmentation", split)]


def mask_folder_items(image_dir: Path, mask_dir: Path) -> list[SegmentationItem]:
    """Every image of `image_dir` (recursively) paired with `mask_dir/<same relative path>.png`."""
    if not image_dir.is_dir():
        raise CvtoolError("image directory not found", where=str(image_dir),
                          fix="use dataset.root with images/<split>/ and masks/<split>/, or set dataset.image_dir and "
                              "dataset.mask_dir (dataset.train_image_dir/train_mask_dir for training)")
    files = sorted(p for p in image_dir.rglob("*") if is_image_file(p))
    if not files:
        raise CvtoolError("no images found", where=str(image_dir), fix="put the split's images there")
    return [SegmentationItem(str(f.relative_to(image_dir).with_suffix("")), f,
                             (mask_dir / f.relative_to(image_dir)).with_suffix(".png")) for f in files]


def open_segmentation_set(items: list[SegmentationItem], classes: list[str], source: str, *, num_classes: int,
                          ignore_index: int | None, skip_invalid: bool = False, problems: list[str] | None = None,
                          keep_masks: bool = False) -> SegmentationSet:
    """Check every mask; problems raise (all counted, the first named) unless `skip_invalid` leaves those items
    out; a `problems` list receives them all. `keep_masks` keeps the decoded masks (small, cached datasets);
    otherwise they are read again per item."""
    if len(classes) != num_classes:
        raise CvtoolError(f"dataset.classes names {len(classes)} classes but dataset.num_classes={num_classes}",
                          where="dataset.classes", fix="give one name per class index, background included")
    found: list[str] = [] if problems is None else problems
    kept, masks = [], []
    for item in items:
        mask = _checked_mask(item, num_classes, ignore_index, found)
        if mask is not None:
            kept.append(item)
            masks.append(mask)
    bad = len(items) - len(kept)
    if bad and problems is None and not skip_invalid:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise CvtoolError(f"invalid mask: {found[0]}{more}", where=source,
                          fix="fix the files (cvtool data check lists every problem), or set data.skip_invalid=true")
    if bad and skip_invalid:
        log.warning("%s: skipped %d item(s) with invalid masks, e.g. %s", source, bad, found[0])
    if not kept:
        raise CvtoolError("no usable images in the split", where=source, fix="check the images and masks")
    return SegmentationSet(kept, list(classes), source, ignore_index=ignore_index,
                           masks=masks if keep_masks else None, num_skipped=bad)


def unlabelled_set(files: list[Path], classes: list[str], source: str, ignore_index: int | None) -> SegmentationSet:
    """Plain images to predict (`cvtool predict source=...`)."""
    return SegmentationSet([SegmentationItem(f.stem, f, None) for f in files], classes, source,
                           ignore_index=ignore_index)


def random_scale_crop(size: int, min_size: int, max_size: int, ignore_index: int = 255) -> v2.Compose:
    """Resize the shorter side to a random length in [min_size, max_size), then take a random `size` crop, padded
    where the image is smaller: images with 0, masks with `ignore_index` (void), so padding is never learnt as a
    class. transforms.v2 resizes tv_tensors.Mask with nearest-neighbour interpolation only."""
    fill = {tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}
    return v2.Compose([v2.RandomResize(min_size, max_size), v2.RandomCrop(size, pad_if_needed=True, fill=fill)])
