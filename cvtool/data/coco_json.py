"""COCO instances JSON (ground truth) and results JSON (detections), checked with errors naming file and object."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write_text

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
    """A COCO instances JSON with the keys the evaluator relies on."""
    path = Path(path)
    data = read_json(path, "COCO annotation file")
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise CvtoolError("not a COCO instances JSON (needs 'images', 'annotations', 'categories')", where=str(path),
                          fix="pass dataset.ann_file= an instances_<split>.json")
    data.setdefault("annotations", [])
    images = _require(data["images"], "images", path, ("id",))
    categories = _require(data["categories"], "categories", path, ("id", "name"))
    image_ids, category_ids = {im["id"] for im in images}, {c["id"] for c in categories}
    for i, ann in enumerate(_require(data["annotations"], "annotations", path,
                                     ("image_id", "category_id", "bbox", "area", "iscrowd"))):
        if ann["image_id"] not in image_ids or ann["category_id"] not in category_ids:
            bad = "image_id" if ann["image_id"] not in image_ids else "category_id"
            raise CvtoolError(f"annotations[{i}] refers to unknown {bad} {ann[bad]!r}", where=str(path),
                              fix="every annotation must refer to an entry of 'images' and 'categories'")
    return data


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_result(r: Any, i: int, images: dict, categories: set, path: Path) -> None:
    where = f"{path} [{i}]"
    if not isinstance(r, dict):
        raise CvtoolError(f"result is a {type(r).__name__}, not an object", where=where, fix=RESULTS_FIX)
    for key in ("image_id", "category_id", "score"):
        if key not in r:
            raise CvtoolError(f"result lacks '{key}'", where=where, fix=RESULTS_FIX)
    if r["image_id"] not in images:
        raise CvtoolError(f"image_id {r['image_id']!r} is not an image of the ground truth", where=where,
                          fix="evaluate against the annotation file the predictions were made for")
    if r["category_id"] not in categories:
        raise CvtoolError(f"category_id {r['category_id']!r} is not a category of the ground truth", where=where,
                          fix=f"use the ground truth's category ids ({', '.join(map(str, sorted(categories)))})")
    if not _is_number(r["score"]):
        raise CvtoolError(f"score {r['score']!r} is not a finite number", where=where, fix=RESULTS_FIX)
    if "bbox" not in r and "segmentation" not in r:
        raise CvtoolError("result has neither 'bbox' nor 'segmentation'", where=where, fix=RESULTS_FIX)
    if "bbox" in r:
        box = r["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box)) and box[2] >= 0 <= box[3]):
            raise CvtoolError(f"bbox {box!r} is not [x, y, width >= 0, height >= 0]", where=where, fix=RESULTS_FIX)
    if "segmentation" in r:
        rle = r["segmentation"]
        if not (isinstance(rle, dict) and "counts" in rle and isinstance(rle.get("size"), list)):
            raise CvtoolError("segmentation is not an RLE {size, counts}", where=where,
                              fix="encode masks with pycocotools.mask.encode (polygons are not results)")
        h, w = images[r["image_id"]]
        if h is not None and list(rle["size"]) != [h, w]:
            raise CvtoolError(f"RLE size {rle['size']} differs from the image's [height, width] {[h, w]}",
                              where=where, fix="encode masks at the image's original size")


def load_results(path: str | Path, gt: dict) -> list[dict]:
    """A results JSON checked against the ground truth's image and category ids."""
    path = Path(path)
    results = read_json(path, "COCO results file")
    if not isinstance(results, list):
        raise CvtoolError(f"results JSON is a {type(results).__name__}, not a list", where=str(path),
                          fix=RESULTS_FIX)
    images = {im["id"]: (im.get("height"), im.get("width")) for im in gt["images"]}
    categories = {c["id"] for c in gt["categories"]}
    for i, r in enumerate(results):
        _check_result(r, i, images, categories, path)
    return results


def write_results(path: str | Path, results: list[dict]) -> Path:
    """A results JSON (floats written exactly, so evaluating the file equals evaluating the list)."""
    atomic_write_text(path, json.dumps(results, separators=(",", ":")))
    return Path(path)
