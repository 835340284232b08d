"""Word image datasets: the images of an MJSynth annotation file or a `path<TAB>text` file, stretched to one size.

Items are (uint8 image C×H×W, item index); the task adapter looks the label up in `texts[index]`. Images of any
width are stretched to `size` = (H, W) without keeping their aspect (as CRNN does), so every batch stacks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from cvtool.errors import CvtoolError

from .classification_sets import _drop_unreadable
from .image_io import read_image
from .word_annotations import LAYOUT, WordItem, read_annotations


class WordSet(Dataset):
    """Word images and their labels as written (`texts`); `classes` (charset characters or lexicon words) and
    `labels` are set by the task adapter. `transform` (the config's transforms, or None) runs after the stretch."""

    def __init__(self, items: list[WordItem], size: tuple[int, int], channels: int, source: str, num_skipped: int = 0):
        if channels not in (1, 3):
            raise CvtoolError(f"word images decode to 1 or 3 channels, not {channels}", where=source,
                              fix="set dataset.channels=1 (grayscale) or 3 (RGB)")
        self.items, self.size, self.channels, self.source = items, (int(size[0]), int(size[1])), channels, source
        self.num_skipped = num_skipped
        self.texts = [item.text for item in items]
        self.files = [item.path for item in items]
        self.classes: list[str] = []
        self.labels: list | None = None  # per-item labels as the adapter uses them (e.g. folded), set by it
        self.transform: Callable | None = None
        self.images: torch.Tensor | None = None  # N×C×H×W uint8 once `cache()` decoded them
        self.in_memory_data = False

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return f"WordSet({self.source})"

    def load_image(self, index: int) -> torch.Tensor:
        """Item `index`'s image decoded and stretched to `size`: uint8 C×H×W, before `transform`."""
        if self.images is not None:
            return self.images[index].clone()  # a copy, so an in-place transform cannot alter the cache
        image = read_image(self.files[index], mode="GRAY" if self.channels == 1 else "RGB")
        return F.resize(image, list(self.size), antialias=True)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = tv_tensors.Image(self.load_image(index))
        if self.transform is not None:
            image = self.transform(image)
        return image, index

    def collate(self, batch: list) -> tuple[torch.Tensor, torch.Tensor, list[str], list[str]]:
        """(images N×C×H×W uint8, item indices int64, their labels as written, their labels as learned)."""
        images, indices = zip(*batch)
        learned = self.texts if self.labels is None else self.labels
        return (torch.stack([image.as_subclass(torch.Tensor) for image in images]), torch.tensor(indices),
                [self.texts[i] for i in indices], [learned[i] for i in indices])

    def cache(self, workers: int | None = None) -> WordSet:
        """Decode every image once into one uint8 N×C×H×W tensor (`workers` threads; default: up to 8 CPUs)."""
        if self.images is None:
            images = torch.empty((len(self), self.channels, *self.size), dtype=torch.uint8)

            def decode(index: int) -> None:
                images[index] = self.load_image(index)

            with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
                list(pool.map(decode, range(len(self))))  # list(): re-raises the first error
            self.images = images
        self.in_memory_data = True
        return self

    def subset(self, indices: Sequence[int]) -> WordSet:
        """The items `indices` (data.limit), with the same classes and transform, and their labels and cached
        images."""
        part = WordSet([self.items[i] for i in indices], self.size, self.channels,
                       f"{self.source}, subset of {len(indices)}")
        part.classes, part.transform = self.classes, self.transform
        if self.labels is not None:
            part.labels = [self.labels[i] for i in indices]
        if self.images is not None:
            part.images, part.in_memory_data = self.images[list(indices)], True
        return part


def open_word_set(annotation_file: str | Path, *, root: str | Path | None, lexicon_path: str | Path | None,
                  size: tuple[int, int], channels: int, skip_invalid: bool, source: str) -> WordSet:
    """The word images listed in `annotation_file` (MJSynth `path index` lines with their lexicon, or `path<TAB>text`
    lines; see cvtool.data.word_annotations), paths under `root` (default: the file's directory). `skip_invalid`
    leaves out unreadable images (zero-byte, corrupt, missing) with a warning naming them; otherwise such an image
    raises a CvtoolError naming it when it is read."""
    items = read_annotations(annotation_file, root=root, lexicon_path=lexicon_path)
    num_skipped = 0
    if skip_invalid:
        _, kept, num_skipped = _drop_unreadable([item.path for item in items], list(range(len(items))))
        items = [items[i] for i in kept]
    if not items:
        what = "no readable word images" if num_skipped else "no word images"
        raise CvtoolError(f"{what} in the annotation file", where=str(annotation_file), fix=f"expected the {LAYOUT}")
    return WordSet(items, size, channels, source, num_skipped)
