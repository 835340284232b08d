"""PASCAL VOC devkit annotations: split lists (ImageSets/*/<split>.txt) and Annotations/<id>.xml files.

Image ids are strings (leading zeros kept). Boxes stay in the devkit's 1-based inclusive pixel coordinates.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError

BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


@dataclass
class VOCObjects:
    """All objects of a split: index of the image in `image_ids`, class index, box (N, 4), difficult flag."""

    image_ids: list[str]
    image: np.ndarray
    label: np.ndarray
    box: np.ndarray
    difficult: np.ndarray
    sizes: dict[str, tuple[int, int]]  # image id -> (width, height) from <size>, when given


def check_devkit_root(root: str | Path, needed: str) -> Path:
    """The devkit year directory (e.g. VOCdevkit/VOC2007), with a hint when a parent directory was given."""
    root = Path(root)
    if (root / needed).is_dir():
        return root
    years = sorted(p.name for p in root.glob("VOC*") if (p / needed).is_dir()) if root.is_dir() else []
    fix = (f"pass the year directory, e.g. dataset.root={root / years[0]}" if years else
           f"set dataset.root to a VOC devkit year directory containing {needed}/")
    raise CvtoolError(f"not a VOC devkit year directory (no {needed}/)", where=str(root), fix=fix)


def read_split(root: Path, kind: str, split: str) -> list[str]:
    """Image ids listed in ImageSets/<kind>/<split>.txt (kind: Main or Segmentation), in file order."""
    path = root / "ImageSets" / kind / f"{split}.txt"
    if not path.is_file():
        found = sorted(p.stem for p in path.parent.glob("*.txt") if "_" not in p.stem)
        raise CvtoolError(f"split list {split}.txt not found", where=str(path),
                          fix=f"use dataset.split= one of {', '.join(found)}" if found else "check dataset.root")
    ids = [line.split()[0] for line in read_text_lines(path, "a split list") if line.strip()]
    bad = next((n for n, i in enumerate(ids, start=1) if "\0" in i or "/" in i or i in (".", "..")), None)
    if bad is not None:
        raise CvtoolError(f"{ids[bad - 1]!r} is not an image id", where=str(path),
                          fix="list one image id (a file name without extension) per line")
    if not ids:
        raise CvtoolError("split list is empty", where=str(path), fix="list one image id per line")
    return ids


def _text(element: ET.Element, tag: str, where: str) -> str:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise CvtoolError(f"missing <{tag}>", where=where, fix="every object needs <name> and <bndbox> with "
                          "<xmin>, <ymin>, <xmax>, <ymax>")
    return child.text.strip()


def _number(element: ET.Element, tag: str, where: str) -> float:
    text = _text(element, tag, where)
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise CvtoolError(f"<{tag}> is not a finite number: {text!r}", where=where, fix="write pixel coordinates")
    return value


def _pixels(size: ET.Element, tag: str, where: str) -> int:
    value = _number(size, tag, where)
    if value < 0 or value != int(value):
        raise CvtoolError(f"<{tag}> is not a pixel count: {value:g}", where=where, fix="write the image size")
    return int(value)


def read_text_lines(path: Path, what: str) -> list[str]:
    """The lines of a UTF-8 text file, with one clear error for a missing, unreadable or binary file."""
    try:
        return path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise CvtoolError(f"{what} is not UTF-8 text (byte {err.start})", where=str(path),
                          fix=f"write {what} as plain text") from None
    except OSError as err:
        raise CvtoolError(f"cannot read {what} ({err.strerror})", where=str(path), fix="check the path") from None


def parse_annotation(path: Path, class_index: dict[str, int]) -> tuple[list[tuple], tuple[int, int] | None]:
    """[(class index, (xmin, ymin, xmax, ymax), difficult), ...] and (width, height) of one annotation file."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise CvtoolError("annotation file not found", where=str(path),
                          fix="every image id of the split needs Annotations/<id>.xml") from None
    except OSError as err:
        raise CvtoolError(f"cannot read annotation file ({err.strerror})", where=str(path),
                          fix="every image id of the split needs a readable Annotations/<id>.xml") from None
    except ET.ParseError as err:
        line, column = err.position
        raise CvtoolError(f"malformed XML ({err})", where=f"{path}:{line}:{column}",
                          fix="repair or regenerate the annotation file") from None
    size = root.find("size")
    wh = None
    if size is not None and size.find("width") is not None:
        wh = (_pixels(size, "width", f"{path} <size>"), _pixels(size, "height", f"{path} <size>"))
    objects = []
    for k, obj in enumerate(root.iter("object")):
        where = f"{path} object #{k + 1}"
        name = _text(obj, "name", where)
        if name not in class_index:
            raise CvtoolError(f"unknown class name {name!r}", where=where,
                              fix=f"classes are {', '.join(class_index)}; set dataset.classes=[...] to match")
        box_el = obj.find("bndbox")
        if box_el is None:
            raise CvtoolError("missing <bndbox>", where=where, fix="every object needs a <bndbox>")
        box = tuple(_number(box_el, tag, where) for tag in BOX_TAGS)
        if box[2] < box[0] or box[3] < box[1]:
            raise CvtoolError(f"box has xmax < xmin or ymax < ymin: {box}", where=where,
                              fix="VOC boxes are (xmin, ymin, xmax, ymax), 1-based inclusive")
        difficult = obj.find("difficult")
        objects.append((class_index[name], box, difficult is not None and (difficult.text or "0").strip() == "1"))
    return objects, wh


@dataclass
class VOCImage:
    """One annotated image: id, objects (class index, 1-based inclusive box, difficult), (width, height)."""

    image_id: str
    labels: np.ndarray
    boxes: np.ndarray
    difficult: np.ndarray
    size: tuple[int, int] | None


def read_voc_split(root: str | Path, split: str, class_names: list[str],
                   problems: list[str] | None = None) -> list[VOCImage]:
    """Every image listed in ImageSets/Main/<split>.txt with its objects. With a `problems` list, a bad annotation
    file is reported there (and its image left out) instead of raising: `cvtool data check` lists them all."""
    root = check_devkit_root(root, "Annotations")
    class_index = {name: i for i, name in enumerate(class_names)}
    images = []
    for image_id in read_split(root, "Main", split):
        try:
            objects, size = parse_annotation(root / "Annotations" / f"{image_id}.xml", class_index)
        except CvtoolError as err:
            if problems is None:
                raise
            problems.append(err.line())
            continue
        labels, boxes, difficult = zip(*objects) if objects else ((), (), ())
        images.append(VOCImage(image_id, np.array(labels, dtype=np.int64),
                               np.array(boxes, dtype=np.float64).reshape(-1, 4), np.array(difficult, dtype=bool),
                               size))
    return images


def load_voc_objects(root: str | Path, split: str, class_names: list[str]) -> VOCObjects:
    """Every object of every image listed in ImageSets/Main/<split>.txt, as flat arrays."""
    images = read_voc_split(root, split, class_names)
    return VOCObjects([im.image_id for im in images],
                      np.concatenate([np.full(len(im.labels), i, dtype=np.int64) for i, im in enumerate(images)]),
                      np.concatenate([im.labels for im in images]), np.concatenate([im.boxes for im in images]),
                      np.concatenate([im.difficult for im in images]),
                      {im.image_id: im.size for im in images if im.size})
