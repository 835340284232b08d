"""COCO keypoint images as a Dataset of (uint8 image, target) pairs, the horizontal flip that swaps left and right
keypoints, and plain image files to predict on.

Targets: {"boxes": BoundingBoxes XYXY (0-based, continuous pixels), "labels": 0-based category index (categories
sorted by id), "keypoints": (N, K, 3) x, y, v in the annotation's pixel coordinates, "image_id", "area", "iscrowd"}.
Training targets leave out crowd people and people without labelled keypoints. Every annotation problem is
collected by `open_keypoint_set`: training refuses them, `skip_invalid` leaves the images out, and
`cvtool data check` lists them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from cvtool.errors import CvtoolError

from .coco_keypoints import Problem, by_id, common_k, find_problems, flip_permutation, names_problem, read_keypoint_json
from .image_io import CORRUPT_FIX, read_image

log = logging.getLogger("cvtool.data")


@dataclass
class KeypointItem:
    """One image and its people: boxes (N, 4) 0-based XYXY float64, labels (N,), keypoints (N, K, 3) x, y, v."""

    image_id: int
    file: Path
    size: tuple[int, int]  # (width, height) from the annotations
    boxes: np.ndarray
    labels: np.ndarray
    keypoints: np.ndarray
    iscrowd: np.ndarray
    area: np.ndarray


class KeypointSet(Dataset):
    """Items are (uint8 image, target); `flip` is the keypoint permutation of a horizontal flip, `skeleton` 0-based
    index pairs, `coco` the annotation dict (for the evaluator)."""

    def __init__(self, items: list[KeypointItem], classes: list[str], keypoint_names: list[str],
                 skeleton: list[tuple[int, int]], flip: list[int], sigmas: list[float] | None, coco: dict,
                 source: str, *, train: bool, num_skipped: int = 0):
        self.items, self.classes, self.keypoint_names, self.skeleton = items, classes, keypoint_names, skeleton
        self.flip, self.sigmas, self.coco, self.source = flip, sigmas, coco, source
        self.train, self.num_skipped = train, num_skipped
        self.transform: Callable | None = None
        self.files = [str(item.file) for item in items]
        self.images: list[torch.Tensor] | None = None  # decoded once by `cache()`
        self.in_memory_data = False

    def cache(self) -> KeypointSet:
        """Decode every image once and keep it in memory (small datasets: no decoding per epoch)."""
        self.images = [self._decode(item) for item in self.items]
        self.in_memory_data = True
        return self

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, indices: Sequence[int]) -> KeypointSet:
        part = KeypointSet([self.items[i] for i in indices], self.classes, self.keypoint_names, self.skeleton,
                           self.flip, self.sigmas, self.coco, f"{self.source}, subset of {len(indices)}",
                           train=self.train)
        part.transform = self.transform
        if self.images is not None:
            part.images, part.in_memory_data = [self.images[i] for i in indices], True
        return part

    def image(self, index: int) -> torch.Tensor:
        """The uint8 (3, H, W) image of item `index`, untransformed."""
        return self.images[index] if self.images is not None else self._decode(self.items[index])

    @staticmethod
    def _decode(item: KeypointItem) -> torch.Tensor:
        image = read_image(item.file)
        if (image.shape[-1], image.shape[-2]) != tuple(item.size):
            raise CvtoolError(f"image is {image.shape[-1]}x{image.shape[-2]} but its annotations say "
                              f"{item.size[0]}x{item.size[1]}", where=str(item.file),
                              fix="fix the image's width/height in the annotation file")
        return image

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict]:
        item = self.items[index]
        image = tv_tensors.Image(self.image(index))
        keep = ~item.iscrowd & (item.keypoints[..., 2] > 0).any(axis=-1) if self.train else \
            np.ones(len(item.labels), dtype=bool)
        target = {"boxes": tv_tensors.BoundingBoxes(torch.as_tensor(item.boxes[keep], dtype=torch.float32),
                                                    format="XYXY", canvas_size=tuple(image.shape[-2:])),
                  "labels": torch.as_tensor(item.labels[keep], dtype=torch.int64),
                  "keypoints": torch.as_tensor(item.keypoints[keep], dtype=torch.float32),
                  "image_id": item.image_id,
                  "area": torch.as_tensor(item.area[keep], dtype=torch.float32),
                  "iscrowd": torch.as_tensor(item.iscrowd[keep], dtype=torch.bool)}
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    @staticmethod
    def collate(batch: list) -> tuple[list, list]:
        return [image for image, _ in batch], [target for _, target in batch]


class KeypointFlip:
    """Horizontal flip of an (image, target) pair with probability p: x -> W - x for labelled points (unlabelled
    ones stay 0, 0, 0), boxes mirrored, and keypoint k moved to perm[k] (left and right swapped)."""

    def __init__(self, perm: Sequence[int], p: float = 0.5):
        self.perm, self.p = list(perm), p

    def __call__(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if torch.rand(1).item() >= self.p:
            return image, target
        width = image.shape[-1]
        boxes = target["boxes"].clone()
        boxes[..., 0], boxes[..., 2] = width - target["boxes"][..., 2], width - target["boxes"][..., 0]
        points = target["keypoints"].clone()
        points[..., 0] = torch.where(points[..., 2] > 0, width - points[..., 0], points[..., 0])
        return F.horizontal_flip(image), {**target, "boxes": boxes, "keypoints": points[:, self.perm]}


def _check_root(root: str | Path | None, ann_file: Path) -> None:
    """A missing annotation file under a missing root: say what the root should hold."""
    if root is not None and not ann_file.is_file() and not Path(root).is_dir():
        expected = ann_file.relative_to(root) if ann_file.is_relative_to(root) else ann_file
        raise CvtoolError("dataset root not found", where=str(root),
                          fix=f"set dataset.root= a directory holding {expected} and the images it lists (COCO: "
                              "annotations/person_keypoints_<split>.json and <split>/)")


def _layout(categories: list[dict], flip_map: Any, where: str) -> tuple[list[str], list[str], list, list[int]]:
    """(class names by category id, keypoint names, 0-based skeleton, flip permutation) of the first category
    with keypoint names (every category shares its K)."""
    k = common_k(categories)
    if k is None:
        raise CvtoolError("no category has keypoint names", where=where,
                          fix="list each category's keypoint names in categories[].keypoints")
    first = next(c for c in categories if names_problem(c) is None)
    names = list(first["keypoints"])
    skeleton = [(a - 1, b - 1) for a, b in _valid_pairs(first.get("skeleton", []), k)]
    return [c["name"] for c in categories], names, skeleton, flip_permutation(names, flip_map)


def _valid_pairs(skeleton: Any, k: int) -> list[list[int]]:
    pairs = skeleton if isinstance(skeleton, list) else []
    return [p for p in pairs if isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) and 1 <= v <= k
                                                                                for v in p)]


def _item(image: dict, anns: list[dict], image_dir: Path, label_of: dict, k: int) -> KeypointItem:
    width, height = image["width"], image["height"]
    boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float64)
    return KeypointItem(
        image["id"], image_dir / image["file_name"], (width, height),
        np.clip(boxes.reshape(-1, 4), 0, [width, height, width, height]),
        np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64),
        np.array([a["keypoints"] for a in anns], dtype=np.float64).reshape(-1, k, 3),
        np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
        np.array([a["area"] for a in anns], dtype=np.float64))


def _items(data: dict, image_dir: Path, found: list[Problem]) -> list[KeypointItem]:
    """Items of the images without problems (missing files are added to `found`)."""
    categories = sorted(data["categories"], key=by_id)
    k = common_k(categories)
    label_of = {c["id"]: index for index, c in enumerate(categories)}
    usable = {c["id"] for c in categories if names_problem(c) is None and len(c["keypoints"]) == k}
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    bad = {p.image for p in found if p.image is not None}
    items = []
    for i, image in enumerate(data["images"]):
        file = image_dir / image["file_name"]
        if not file.is_file():
            found.append(Problem(f"images[{i}] file missing", str(file), "restore the image or point "
                                 "dataset.image_dir at the images", image["id"]))
            continue
        anns = by_image.get(image["id"], [])
        if image["id"] not in bad and all(a["category_id"] in usable for a in anns):
            items.append(_item(image, anns, image_dir, label_of, k))
    return items


def open_keypoint_set(root: str | Path | None, ann_file: str | Path, image_dir: str | Path, *, train: bool,
                      skip_invalid: bool = False, problems: list[str] | None = None,
                      sigmas: Sequence[float] | None = None, flip_map: Any = None) -> KeypointSet:
    """A COCO keypoints split (`ann_file`, `image_dir` as the config gives them, under the dataset `root`). Problems
    raise (all counted, the first named) unless `skip_invalid` leaves their images out (problems of the categories
    or of `sigmas` still raise); a `problems` list receives every one, one line each, and the usable images are
    kept."""
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    _check_root(root, ann_file)
    data = read_keypoint_json(ann_file)
    found = find_problems(data, ann_file, sigmas)
    classes, names, skeleton, flip = _layout(sorted(data["categories"], key=by_id), flip_map, str(ann_file))
    items = _items(data, image_dir, found)
    fatal = [p for p in found if p.image is None and not p.orphan]
    if found and problems is None and (fatal or not skip_invalid):
        raise (fatal or found)[0].error(len(found) - 1)
    if problems is not None:
        problems.extend(p.line() for p in found)
    elif found:
        log.warning("%s: skipped %d invalid annotation(s), e.g. %s", ann_file, len(found), found[0].line())
    if not items:
        raise CvtoolError("no usable images in the split", where=str(ann_file),
                          fix="check the annotations and images (`cvtool data check` lists every problem)")
    return KeypointSet(items, classes, names, skeleton, flip, None if sigmas is None else list(sigmas), data,
                       f"COCO keypoints {ann_file}", train=train, num_skipped=len(found))


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CvtoolError("image file is corrupt or unreadable", where=str(path), fix=CORRUPT_FIX) from exc


def source_set(files: Sequence[str | Path], ann_file: str | Path | None, class_names: Sequence[str] | None,
               source: str, *, flip_map: Any = None, sigmas: Sequence[float] | None = None) -> KeypointSet:
    """Plain image files (no people annotated, image ids 1..N), with the categories, keypoint names and skeleton
    of `ann_file` (the training data's annotation file)."""
    if ann_file is None or not Path(ann_file).is_file():
        raise CvtoolError("keypoint names and skeleton are read from the annotation file, which is missing",
                          where=str(ann_file), fix="set dataset.ann_file= a keypoints JSON of the model's categories")
    data = read_keypoint_json(ann_file)
    categories = sorted(data["categories"], key=by_id)
    classes, names, skeleton, flip = _layout(categories, flip_map, str(ann_file))
    if class_names and list(class_names) != classes:
        raise CvtoolError(f"the model knows categories {list(class_names)} but {ann_file} has {classes}",
                          where=str(ann_file), fix="point dataset.ann_file at the training data's annotation file")
    k, items, images = len(names), [], []
    for image_id, file in enumerate(map(Path, files), start=1):
        width, height = _image_size(file)
        items.append(KeypointItem(image_id, file, (width, height), np.zeros((0, 4)), np.zeros(0, np.int64),
                                  np.zeros((0, k, 3)), np.zeros(0, bool), np.zeros(0)))
        images.append({"id": image_id, "file_name": str(file), "width": width, "height": height})
    coco = {"images": images, "annotations": [], "categories": data["categories"]}
    return KeypointSet(items, classes, names, skeleton, flip, None if sigmas is None else list(sigmas), coco,
                       source, train=False)


__all__ = ["KeypointFlip", "KeypointItem", "KeypointSet", "open_keypoint_set", "source_set"]
