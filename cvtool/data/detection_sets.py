"""Detection datasets read from VOC devkits and COCO instances JSON, as (image, target) pairs of tv_tensors.

Targets: {"boxes": BoundingBoxes XYXY (0-based, continuous pixels), "labels": 0-based class indices, "image_id",
"masks" (COCO, when asked)}. VOC `difficult` and COCO `iscrowd` objects are kept for evaluation but left out of
training targets. Every annotation problem (missing image, box outside the image or of non-positive size, unknown
class, malformed file) is collected by `open_detection_set`: training refuses them, or skips the images with
`skip_invalid`, and `cvtool data check` lists them all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from cvtool.errors import CvtoolError

from .image_io import read_image

log = logging.getLogger("cvtool.data")

EDGE_TOLERANCE = 1.0  # px a box may exceed the image by (rounding in real annotations) before it is a problem


@dataclass
class DetectionItem:
    """One image and its objects: boxes (N, 4) 0-based XYXY float64, 0-based labels, `ignore` (difficult/crowd)."""

    image_id: str | int
    file: Path
    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray
    size: tuple[int, int] | None  # (width, height) from the annotations
    segmentation: list | None = None  # COCO polygons/RLE per object
    proposals: np.ndarray | None = None  # (n, 4) ranked region proposals (fast_rcnn, rcnn), XYXY like `boxes`


class DetectionSet(Dataset):
    """Items are (uint8 image, target). `train=True` drops ignored objects from the targets (not from `items`)."""

    def __init__(self, items: list[DetectionItem], classes: list[str], kind: str, source: str, *, train: bool,
                 with_masks: bool = False, coco: dict | None = None, num_skipped: int = 0):
        self.items, self.classes, self.kind, self.source = items, classes, kind, source
        self.train, self.with_masks, self.coco, self.num_skipped = train, with_masks, coco, num_skipped
        self.transform: Callable | None = None
        self.files = [str(item.file) for item in items]
        self.images: list[torch.Tensor] | None = None  # decoded once by `cache()`
        self.in_memory_data = False

    def cache(self) -> DetectionSet:
        """Decode every image once and keep it in memory (small datasets: no decoding per epoch)."""
        self.images = [read_image(item.file) for item in self.items]
        self.in_memory_data = True
        return self

    def __len__(self) -> int:
        return len(self.items)

    def aspect_groups(self) -> list[int]:
        """0 for landscape (or square) images, 1 for portrait ones, from the annotated sizes."""
        return [int(item.size is not None and item.size[1] > item.size[0]) for item in self.items]

    def subset(self, indices: list[int]) -> DetectionSet:
        part = DetectionSet([self.items[i] for i in indices], self.classes, self.kind,
                            f"{self.source}, subset of {len(indices)}", train=self.train, with_masks=self.with_masks,
                            coco=self.coco)
        part.transform = self.transform
        if self.images is not None:
            part.images, part.in_memory_data = [self.images[i] for i in indices], True
        return part

    def __getitem__(self, index: int) -> tuple[tv_tensors.Image, dict]:
        item = self.items[index]
        image = tv_tensors.Image(self.images[index] if self.images is not None else read_image(item.file))
        keep = ~item.ignore if self.train else np.ones(len(item.labels), dtype=bool)
        height, width = image.shape[-2:]
        target = {"boxes": tv_tensors.BoundingBoxes(torch.as_tensor(item.boxes[keep], dtype=torch.float32),
                                                    format="XYXY", canvas_size=(height, width)),
                  "labels": torch.as_tensor(item.labels[keep], dtype=torch.int64)}
        if self.with_masks:
            target["masks"] = tv_tensors.Mask(coco_masks(item, keep, height, width))
        if item.proposals is not None:  # after "boxes": box-aware transforms move both, sanitizing reads "boxes"
            target["proposals"] = tv_tensors.BoundingBoxes(torch.as_tensor(item.proposals, dtype=torch.float32),
                                                           format="XYXY", canvas_size=(height, width))
        if self.transform is not None:
            before = len(target["labels"])
            image, target = self.transform(image, target)
            target["removed"] = before - len(target["labels"])
        target["image_id"] = item.image_id
        return image, target

    @staticmethod
    def collate(batch: list) -> tuple[list, list]:
        return [image for image, _ in batch], [target for _, target in batch]


def coco_masks(item: DetectionItem, keep: np.ndarray, height: int, width: int) -> torch.Tensor:
    """(N, H, W) uint8 instance masks from COCO polygons or RLE."""
    from pycocotools import mask as mask_utils

    masks = []
    for segm, kept in zip(item.segmentation or [], keep):
        if not kept:
            continue
        rles = mask_utils.frPyObjects(segm, height, width) if isinstance(segm, list) or isinstance(
            segm.get("counts"), list) else segm
        masks.append(mask_utils.decode(mask_utils.merge(rles) if isinstance(rles, list) else rles))
    return torch.as_tensor(np.stack(masks) if masks else np.zeros((0, height, width), np.uint8))


class with_sanitizing:  # noqa: N801 - used as a function
    """The dataset's transforms followed by box clamping and removal of degenerate boxes (counted per item);
    proposals are clamped and their degenerate ones dropped apart from the objects (v2's SanitizeBoundingBoxes
    filters one set of boxes and its labels)."""

    def __init__(self, transform: Callable | None):
        self.transform = transform
        self.sanitize = v2.Compose([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)])

    def __call__(self, image, target: dict):
        if self.transform is not None:
            image, target = self.transform(image, target)
        proposals = target.pop("proposals", None)
        image, target = self.sanitize(image, target)
        if proposals is not None:
            proposals = v2.functional.clamp_bounding_boxes(proposals)
            sides = proposals[:, 2:] - proposals[:, :2]
            target["proposals"] = proposals[(sides >= 1.0).all(1)]
        return image, target


def box_problems(item: DetectionItem, where: str) -> list[str]:
    """Boxes of non-positive size, or outside the image by more than EDGE_TOLERANCE px."""
    problems = []
    for k, (x0, y0, x1, y1) in enumerate(item.boxes):
        if x1 <= x0 or y1 <= y0:
            problems.append(f"box {k + 1} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) has non-positive size ({where})")
        elif item.size and (x0 < -EDGE_TOLERANCE or y0 < -EDGE_TOLERANCE or x1 > item.size[0] + EDGE_TOLERANCE
                            or y1 > item.size[1] + EDGE_TOLERANCE):
            problems.append(f"box {k + 1} ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the {item.size[0]}x"
                            f"{item.size[1]} image ({where})")
    return problems


def voc_items(root: Path, split: str, classes: list[str], problems: list[str]) -> list[DetectionItem]:
    from .voc_annotations import read_voc_split

    items = []
    for image in read_voc_split(root, split, classes, problems):
        boxes = image.boxes.copy()
        boxes[:, :2] -= 1.0  # 1-based inclusive pixels -> 0-based continuous coordinates
        item = DetectionItem(image.image_id, root / "JPEGImages" / f"{image.image_id}.jpg", boxes, image.labels,
                             image.difficult, image.size)
        found = box_problems(item, f"{root / 'Annotations' / image.image_id}.xml")
        if not item.file.is_file():
            found.append(f"image file missing ({item.file})")
        problems.extend(found)
        if not found:
            items.append(item)
    return items


def coco_items(ann_file: Path, image_dir: Path, problems: list[str]) -> tuple[list[DetectionItem], list[str], dict]:
    from .coco_json import load_instances

    data = load_instances(ann_file)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: k for k, c in enumerate(categories)}
    objects: dict = {}
    for ann in data["annotations"]:
        objects.setdefault(ann["image_id"], []).append(ann)
    items = []
    for image in data["images"]:
        anns = objects.get(image["id"], [])
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)],
                         dtype=np.float64).reshape(-1, 4)
        size = (image["width"], image["height"]) if "width" in image and "height" in image else None
        item = DetectionItem(image["id"], image_dir / image.get("file_name", f"{image['id']}.jpg"), boxes,
                             np.array([label_of[a["category_id"]] for a in anns], dtype=np.int64),
                             np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool), size,
                             [a.get("segmentation") for a in anns])
        found = box_problems(item, f"{ann_file} image {image['id']}")
        if not item.file.is_file():
            found.append(f"image file missing ({item.file})")
        problems.extend(found)
        if not found:
            if size:
                item.boxes = np.clip(boxes, 0, [size[0], size[1], size[0], size[1]])
            items.append(item)
    return items, [c["name"] for c in categories], data


def open_detection_set(kind: str, *, root: Path | None, split: str, classes: list[str] | None,
                       ann_file: str | None = None, image_dir: str | None = None, train: bool,
                       with_masks: bool = False, skip_invalid: bool = False,
                       problems: list[str] | None = None) -> DetectionSet:
    """A VOC (`kind="voc"`) or COCO (`kind="coco"`) split. Annotation problems raise (all of them counted, the first
    named) unless `skip_invalid`, which leaves those images out; a `problems` list receives them all."""
    found: list[str] = [] if problems is None else problems
    if kind == "voc":
        if not classes:
            raise CvtoolError("a VOC dataset needs its class names", where="dataset.classes",
                              fix="set dataset.classes=[name, ...] in annotation order")
        items = voc_items(Path(root), split, list(classes), found)
        data, source = None, f"VOC {root} [{split}]"
    elif kind == "coco":
        items, names, data = coco_items(Path(ann_file), Path(image_dir), found)
        if classes and list(classes) != names:
            raise CvtoolError(f"dataset.classes {list(classes)[:5]}... differ from the categories {names[:5]}...",
                              where=str(ann_file), fix="set dataset.classes=null to use the file's categories")
        classes, source = names, f"COCO {ann_file}"
    else:
        raise CvtoolError(f"dataset kind {kind!r} is not a detection dataset", where="dataset.kind",
                          fix="use dataset=voc, coco, shapes_det or shapes_coco")
    if found and problems is None and not skip_invalid:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise CvtoolError(f"invalid annotation: {found[0]}{more}", where=source,
                          fix="fix the files (cvtool data check lists every problem), or set data.skip_invalid=true")
    if found and skip_invalid:
        log.warning("%s: skipped %d invalid annotation(s), e.g. %s", source, len(found), found[0])
    if not items:
        raise CvtoolError("no usable images in the split", where=source, fix="check the annotations and images")
    return DetectionSet(items, list(classes), kind, source, train=train, with_masks=with_masks, coco=data,
                        num_skipped=len(found))


def restrict_coco(data: dict, image_ids: list) -> dict:
    """The instances dict limited to `image_ids` (the ground truth of a subset)."""
    keep = set(image_ids)
    return {**data, "images": [im for im in data["images"] if im["id"] in keep],
            "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}


__all__ = ["DetectionItem", "DetectionSet", "open_detection_set", "restrict_coco", "with_sanitizing"]
