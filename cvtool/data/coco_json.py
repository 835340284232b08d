"""COCO instances JSON (ground truth) and results JSON (detections), checked with errors naming file and object."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write_text

from .coco_segmentation import image_size_problem, is_integer, polygon_problem, rle_problem

RESULTS_FIX = ("a results JSON is a list of {image_id, category_id, score, bbox: [x, y, w, h]} and/or "
               "segmentation: RLE {size, counts}")


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise CvtoolError(f"{what} not found", where=str(path), fix="check the path")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise CvtoolError(f"malformed JSON ({err.msg})", where=f"{path}:{err.lineno}:{err.colno}",
                          fix=f"repair or regenerate the {what}") from None
    except UnicodeDecodeError:
        raise CvtoolError("not a UTF-8 text file", where=str(path), fix=f"pass a JSON {what}") from None


def _require(items: Any, key: str, path: Path, fields: tuple[str, ...]) -> list[dict]:
    if not isinstance(items, list):
        raise CvtoolError(f"'{key}' is not a list", where=str(path), fix="use a COCO instances JSON")
    for i, item in enumerate(items):
        missing = [f for f in fields if not isinstance(item, dict) or f not in item]
        if missing:
            raise CvtoolError(f"{key}[{i}] lacks {', '.join(missing)}", where=str(path),
                              fix=f"every entry of '{key}' needs {', '.join(fields)}")
    return items


def load_instances(path: str | Path) -> dict:
    """A COCO instances JSON with the keys the evaluator relies on, every id, box, size and mask checked."""
    path = Path(path)
    data = read_json(path, "COCO annotation file")
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise CvtoolError("not a COCO instances JSON (needs 'images', 'annotations', 'categories')", where=str(path),
                          fix="pass dataset.ann_file= an instances_<split>.json")
    data.setdefault("annotations", [])
    images = _require(data["images"], "images", path, ("id",))
    categories = _require(data["categories"], "categories", path, ("id", "name"))
    sizes = {}
    for i, im in enumerate(images):
        _check_id(im, "id", f"images[{i}]", path)
        if "width" in im or "height" in im:
            if problem := image_size_problem(im.get("height"), im.get("width")):
                raise CvtoolError(f"images[{i}] {problem}", where=str(path), fix="give every image its size in pixels")
            sizes[im["id"]] = (im["height"], im["width"])
    for i, c in enumerate(categories):
        _check_id(c, "id", f"categories[{i}]", path)
        if not isinstance(c["name"], str):
            raise CvtoolError(f"categories[{i}] has name {c['name']!r}, not a string", where=str(path),
                              fix="name every category")
    image_ids, category_ids = {im["id"] for im in images}, {c["id"] for c in categories}
    annotations = _require(data["annotations"], "annotations", path,
                           ("id", "image_id", "category_id", "bbox", "area", "iscrowd"))
    for i, ann in enumerate(annotations):
        _check_annotation(ann, f"annotations[{i}]", path, image_ids, category_ids, sizes)
    duplicate = _first_duplicate([ann["id"] for ann in annotations])
    if duplicate is not None:
        raise CvtoolError(f"annotation id {duplicate!r} is used twice", where=str(path),
                          fix="give every annotation a unique 'id'")
    return data


def _is_id(value: Any) -> bool:
    return is_integer(value) or isinstance(value, str)


def _check_id(item: dict, key: str, name: str, path: Path) -> None:
    if not _is_id(item[key]):
        raise CvtoolError(f"{name} has {key} {item[key]!r}, not an integer or string", where=str(path),
                          fix="COCO ids are integers")


def _first_duplicate(values: list) -> Any:
    seen: set = set()
    return next((v for v in values if v in seen or seen.add(v)), None)


def _check_annotation(ann: dict, name: str, path: Path, image_ids: set, category_ids: set, sizes: dict) -> None:
    for key in ("id", "image_id", "category_id"):
        _check_id(ann, key, name, path)
    if ann["image_id"] not in image_ids or ann["category_id"] not in category_ids:
        bad = "image_id" if ann["image_id"] not in image_ids else "category_id"
        raise CvtoolError(f"{name} refers to unknown {bad} {ann[bad]!r}", where=str(path),
                          fix="every annotation must refer to an entry of 'images' and 'categories'")
    box = ann["bbox"]
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box)) and box[2] >= 0 <= box[3]):
        raise CvtoolError(f"{name} has bbox {box!r}, not [x, y, width >= 0, height >= 0]", where=str(path),
                          fix="write boxes as [x, y, width, height] in pixels")
    if not (_is_number(ann["area"]) and ann["area"] >= 0) or ann["iscrowd"] not in (0, 1):
        bad = "area" if ann["iscrowd"] in (0, 1) else "iscrowd"
        raise CvtoolError(f"{name} has {bad} {ann[bad]!r}", where=str(path),
                          fix="'area' is a number of pixels >= 0 and 'iscrowd' is 0 or 1")
    if "segmentation" in ann:
        segmentation, shape = ann["segmentation"], sizes.get(ann["image_id"])
        problem = (rle_problem(segmentation, shape) if isinstance(segmentation, dict) else
                   polygon_problem(segmentation) or (None if shape else f"has a polygon but image "
                                                     f"{ann['image_id']!r} has no width/height"))
        if problem:
            raise CvtoolError(f"{name} {problem}", where=str(path),
                              fix="a segmentation is a list of polygons [x1, y1, x2, y2, ...] or an RLE {size: "
                                  "[height, width], counts} of the image's size")


def require_segmentations(data: dict, path: str | Path) -> None:
    """Mask evaluation (iou_type=segm) needs every ground-truth annotation's segmentation and every image's size."""
    lacking = next((i for i, ann in enumerate(data["annotations"]) if "segmentation" not in ann), None)
    if lacking is not None:
        raise CvtoolError(f"annotations[{lacking}] has no 'segmentation' for iou_type=segm", where=str(path),
                          fix="evaluate iou_type=bbox, or use an annotation file with masks")
    sizeless = next((i for i, im in enumerate(data["images"]) if "height" not in im or "width" not in im), None)
    if sizeless is not None:
        raise CvtoolError(f"images[{sizeless}] has no width/height, needed for iou_type=segm", where=str(path),
                          fix="give every image its size in pixels")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_result_head(r: Any, where: str, images: Any, categories: Any, fix: str) -> None:
    """A result entry is an object whose image_id and category_id are in the ground truth and whose score is a
    finite number (what every COCO results type shares); `fix` describes the results format."""
    if not isinstance(r, dict):
        raise CvtoolError(f"result is a {type(r).__name__}, not an object", where=where, fix=fix)
    for key in ("image_id", "category_id", "score"):
        if key not in r:
            raise CvtoolError(f"result lacks '{key}'", where=where, fix=fix)
    if not _is_id(r["image_id"]) or r["image_id"] not in images:
        raise CvtoolError(f"image_id {r['image_id']!r} is not an image of the ground truth", where=where,
                          fix="evaluate against the annotation file the predictions were made for")
    if not _is_id(r["category_id"]) or r["category_id"] not in categories:
        raise CvtoolError(f"category_id {r['category_id']!r} is not a category of the ground truth", where=where,
                          fix=f"use the ground truth's category ids ({', '.join(map(str, sorted(categories)))})")
    if not _is_number(r["score"]):
        raise CvtoolError(f"score {r['score']!r} is not a finite number", where=where, fix=fix)


def _check_result(r: Any, i: int, images: dict, categories: set, path: Path) -> None:
    where = f"{path} [{i}]"
    check_result_head(r, where, images, categories, RESULTS_FIX)
    if "bbox" not in r and "segmentation" not in r:
        raise CvtoolError("result has neither 'bbox' nor 'segmentation'", where=where, fix=RESULTS_FIX)
    if "bbox" in r:
        box = r["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box)) and box[2] >= 0 <= box[3]):
            raise CvtoolError(f"bbox {box!r} is not [x, y, width >= 0, height >= 0]", where=where, fix=RESULTS_FIX)
    if "segmentation" in r:
        shape = images[r["image_id"]]
        if shape is None:
            raise CvtoolError(f"image {r['image_id']!r} has no width/height in the ground truth, needed to check its "
                              "masks", where=where, fix="give every image of the ground truth its size in pixels")
        if not isinstance(r["segmentation"], dict):
            problem = "has a segmentation that is not an RLE {size, counts}"
        elif isinstance(r["segmentation"].get("counts"), list):
            problem = "has uncompressed RLE 'counts' (a list)"
        else:
            problem = rle_problem(r["segmentation"], shape)
        if problem:
            raise CvtoolError(f"result {i} {problem}", where=where,
                              fix="encode each mask at the image's size with pycocotools.mask.encode and write its "
                                  "counts as a string (polygons are not results)")


def read_result_list(path: str | Path, what: str, fix: str) -> list:
    """A JSON file holding a list of results (detections, keypoints, person boxes): anything else is refused."""
    results = read_json(path, what)
    if not isinstance(results, list):
        raise CvtoolError(f"results JSON is a {type(results).__name__}, not a list", where=str(path), fix=fix)
    return results


def load_results(path: str | Path, gt: dict) -> list[dict]:
    """A results JSON checked against the ground truth's image and category ids."""
    path = Path(path)
    results = read_result_list(path, "COCO results file", RESULTS_FIX)
    images = {im["id"]: (im["height"], im["width"]) if "height" in im else None for im in gt["images"]}
    categories = {c["id"] for c in gt["categories"]}
    for i, r in enumerate(results):
        _check_result(r, i, images, categories, path)
    return results


def write_results(path: str | Path, results: list[dict]) -> Path:
    """A results JSON (floats written exactly, so evaluating the file equals evaluating the list)."""
    atomic_write_text(path, json.dumps(results, separators=(",", ":")))
    return Path(path)
