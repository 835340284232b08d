"""COCO keypoints JSON (any K, any number of categories): every problem named by file and index, and the flip map.

Torch-free, so `cvtool eval predictions=` can read the ground truth without it. The image dataset (`KeypointSet`,
`open_keypoint_set`, `KeypointFlip`, `KeypointItem`, `source_set`) lives in `keypoint_sets` and is importable from
here too. Checks: K = len(category.keypoints) shared by every category, `keypoints` of 3K numbers, v in {0, 1, 2},
unlabelled points written 0,0,0, num_keypoints = count of v > 0, labelled points inside the image, visible ones
inside (or near) their box, positive boxes inside the image, known image/category ids, 1-based skeleton indices,
sigmas of length K.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError

from .coco_json import _check_id, _first_duplicate, _require, read_json
from .coco_segmentation import image_size_problem, is_integer

EDGE_TOLERANCE = 1.0  # px a labelled point or a box may exceed the image by (rounding in real annotations)
BOX_TOLERANCE = (2.0, 0.05)  # a visible point may lie this far outside its box: max(px, fraction of the box side)
FLIP_WHERE = "dataset.flip_map"
_SIDE_WORDS = {"left": "right", "right": "left", "l": "r", "r": "l"}
_LAZY = ("KeypointItem", "KeypointSet", "KeypointFlip", "open_keypoint_set", "source_set")


@dataclass(frozen=True)
class Problem:
    """One problem: what is wrong, where (file or config key), how to fix it, and the image it spoils (None: the
    whole file, e.g. a category, unless `orphan`: an annotation of no known image, which is never loaded)."""

    what: str
    where: str
    fix: str
    image: Any = None
    orphan: bool = False

    def line(self) -> str:
        return f"{self.what} ({self.where})"

    def error(self, more: int = 0) -> CvtoolError:
        extra = f" (and {more} more: `cvtool data check` lists them all)" if more else ""
        return CvtoolError(self.what + extra, where=self.where, fix=self.fix)


def read_keypoint_json(path: str | Path) -> dict:
    """The JSON with its lists and required fields present (a malformed file raises: nothing to list per entry)."""
    path = Path(path)
    data = read_json(path, "COCO keypoints annotation file")
    check_structure(data, path)
    return data


def check_structure(data: Any, path: str | Path) -> None:
    path = Path(path)
    if not isinstance(data, dict) or "images" not in data or "categories" not in data:
        raise CvtoolError("not a COCO keypoints JSON (needs 'images', 'annotations', 'categories')", where=str(path),
                          fix="pass an annotation file like person_keypoints_<split>.json")
    data.setdefault("annotations", [])
    _require(data["images"], "images", path, ("id", "file_name", "width", "height"))
    _require(data["categories"], "categories", path, ("id", "name"))
    _require(data["annotations"], "annotations", path,
             ("id", "image_id", "category_id", "keypoints", "num_keypoints", "bbox", "area"))
    for key in ("images", "categories", "annotations"):
        for i, item in enumerate(data[key]):
            _check_id(item, "id", f"{key}[{i}]", path)  # hashable, so the checks below can index by id


def load_keypoint_instances(path: str | Path) -> dict:
    """The keypoints JSON read and checked; raises CvtoolError on the first problem (file and index named)."""
    data = read_keypoint_json(path)
    found = find_problems(data, Path(path), None)
    if found:
        raise found[0].error(len(found) - 1)
    return data


def keypoint_problems(data: dict, path: str | Path, sigmas: Sequence[float] | None) -> list[str]:
    """Every problem of a keypoints JSON (and of `sigmas` against its K), one line each."""
    check_structure(data, path)
    return [p.line() for p in find_problems(data, Path(path), sigmas)]


def find_problems(data: dict, path: Path, sigmas: Sequence[float] | None) -> list[Problem]:
    """Every problem of a structurally checked keypoints JSON, as Problems (their image marks what to skip)."""
    found = _category_problems(data["categories"], path)
    k = common_k(data["categories"])
    if sigmas is not None and k is not None:
        found += _sigma_problems(sigmas, k)
    found += _id_problems(data, path)
    sizes = {im["id"]: (im["width"], im["height"]) for im in data["images"]}
    for i, im in enumerate(data["images"]):
        if problem := image_size_problem(im["height"], im["width"]):
            found.append(Problem(f"images[{i}] {problem}", str(path), "give every image its size in pixels",
                                 im["id"]))
    categories = {c["id"]: c for c in data["categories"]}
    for i, ann in enumerate(data["annotations"]):
        found += _annotation_problems(ann, f"annotations[{i}]", path, sizes, categories)
    return found


def common_k(categories: list[dict]) -> int | None:
    """K of the first category (by id) with valid keypoint names; None when none has any."""
    valid = [c for c in sorted(categories, key=by_id) if names_problem(c) is None]
    return len(valid[0]["keypoints"]) if valid else None


def by_id(category: dict) -> tuple[str, Any]:
    return (type(category["id"]).__name__, category["id"])  # sortable even when ids are of mixed types


def names_problem(category: dict) -> str | None:
    names = category.get("keypoints")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return "has no 'keypoints' (a list of keypoint names)"
    if len(set(names)) < len(names):
        return f"names keypoint {_first_duplicate(names)!r} twice"
    return None


def _category_problems(categories: list[dict], path: Path) -> list[Problem]:
    found, counts = [], {}
    for i, c in enumerate(categories):
        where = f"categories[{i}] ({c['name']!r})"
        if problem := names_problem(c):
            found.append(Problem(f"{where} {problem}", str(path), "list the category's keypoint names in "
                                                                  "'keypoints', in annotation order"))
            continue
        k = len(c["keypoints"])
        counts.setdefault(k, i)
        found += [Problem(f"{where} {p}", str(path), "skeleton pairs are 1-based keypoint indices [a, b] in 1..K")
                  for p in _skeleton_problems(c.get("skeleton", []), k)]
    if len(counts) > 1:
        ks = sorted(counts)
        found.append(Problem(f"categories have {' and '.join(map(str, ks))} keypoints", str(path),
                             "give every category the same keypoints (the models predict one K)"))
    return found


def _skeleton_problems(skeleton: Any, k: int) -> list[str]:
    if not isinstance(skeleton, list):
        return [f"has skeleton {skeleton!r}, not a list of [a, b] pairs"]
    problems = []
    for j, pair in enumerate(skeleton):
        if not (isinstance(pair, list) and len(pair) == 2 and all(is_integer(v) for v in pair)):
            problems.append(f"skeleton[{j}] {pair!r} is not a pair of keypoint indices")
        elif not all(1 <= v <= k for v in pair):
            problems.append(f"skeleton[{j}] {pair} has an index out of range 1..{k}")
    return problems


def _sigma_problems(sigmas: Sequence[float], k: int) -> list[Problem]:
    fix = f"give one OKS sigma per keypoint: {k} positive numbers (COCO's 17 for COCO persons)"
    values = list(sigmas)
    if len(values) != k:
        return [Problem(f"{len(values)} sigmas for {k} keypoints", "dataset.sigmas", fix)]
    if not all(_is_number(v) and v > 0 for v in values):
        return [Problem(f"sigmas {values} are not all positive numbers", "dataset.sigmas", fix)]
    return []


def _id_problems(data: dict, path: Path) -> list[Problem]:
    found = []
    for key in ("images", "categories", "annotations"):
        ids = [item["id"] for item in data[key]]
        bad = next((i for i, v in enumerate(ids) if not is_integer(v)), None)
        if bad is not None:
            found.append(Problem(f"{key}[{bad}] has id {ids[bad]!r}, not an integer", str(path),
                                 "COCO keypoint ids are integers"))
        elif (duplicate := _first_duplicate(ids)) is not None:
            found.append(Problem(f"{key} id {duplicate!r} is used twice", str(path),
                                 f"give every entry of '{key}' a unique id"))
    return found


def _annotation_problems(ann: dict, name: str, path: Path, sizes: dict, categories: dict) -> list[Problem]:
    image = ann["image_id"]
    for key in ("image_id", "category_id"):
        if not is_integer(ann[key]):
            orphan = key == "image_id"  # an annotation of no image is never loaded
            return [Problem(f"{name} has {key} {ann[key]!r}, not an integer", str(path),
                            "COCO keypoint ids are integers", None if orphan else image, orphan=orphan)]
    if image not in sizes:
        return [Problem(f"{name} refers to unknown image_id {image!r}", str(path),
                        "every annotation must refer to an entry of 'images'", image, orphan=True)]
    category = categories.get(ann["category_id"])
    if category is None:
        return [Problem(f"{name} refers to unknown category_id {ann['category_id']!r}", str(path),
                        "every annotation must refer to an entry of 'categories'", image)]
    if names_problem(category):
        return []  # the category's own problem is listed once
    messages = _box_messages(ann, sizes[image]) + _point_messages(ann, category, sizes[image])
    return [Problem(f"{name} {what}", str(path), fix, image) for what, fix in messages]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _box_messages(ann: dict, size: tuple[int, int]) -> list[tuple[str, str]]:
    box, fix = ann["bbox"], "write boxes as [x, y, width > 0, height > 0] in pixels, inside the image"
    messages = []
    if not (_is_number(ann["area"]) and ann["area"] >= 0):
        messages.append((f"has area {ann['area']!r}", "'area' is a number of pixels >= 0 (OKS's object scale)"))
    if ann.get("iscrowd", 0) not in (0, 1):
        messages.append((f"has iscrowd {ann['iscrowd']!r}", "'iscrowd' is 0 or 1"))
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
        return [*messages, (f"has bbox {box!r}, not [x, y, width, height]", fix)]
    x, y, w, h = box
    if w <= 0 or h <= 0:
        messages.append((f"has bbox {box} of non-positive size", fix))
    elif x < -EDGE_TOLERANCE or y < -EDGE_TOLERANCE or x + w > size[0] + EDGE_TOLERANCE or \
            y + h > size[1] + EDGE_TOLERANCE:
        messages.append((f"has bbox {box} outside the {size[0]}x{size[1]} image", fix))
    return messages


def _point_messages(ann: dict, category: dict, size: tuple[int, int]) -> list[tuple[str, str]]:
    names, values = category["keypoints"], ann["keypoints"]
    k = len(names)
    if not (isinstance(values, list) and all(map(_is_number, values))):
        return [("has keypoints that are not a list of numbers", "write keypoints as [x1, y1, v1, x2, y2, v2, ...]")]
    if len(values) != 3 * k:
        return [(f"has {len(values)} keypoint numbers, not 3 x {k} = {3 * k} (category {category['name']!r})",
                 "write x, y, v for every keypoint of the category, in its 'keypoints' order")]
    points = [values[3 * j:3 * j + 3] for j in range(k)]
    bad_v = [j for j, (_, _, v) in enumerate(points) if v not in (0, 1, 2)]
    if bad_v:
        j = bad_v[0]
        return [(f"keypoint {j + 1} ({names[j]}) has v={points[j][2]!r}, not 0, 1 or 2" + _more(bad_v),
                 "v is 0 (unlabelled), 1 (labelled, hidden) or 2 (labelled, visible)")]
    messages = []
    if zeros := [j for j, (x, y, v) in enumerate(points) if v == 0 and (x, y) != (0, 0)]:
        j = zeros[0]
        messages.append((f"keypoint {j + 1} ({names[j]}) is unlabelled (v=0) but at ({points[j][0]:g}, "
                         f"{points[j][1]:g})" + _more(zeros), "write unlabelled keypoints as 0, 0, 0"))
    labelled = sum(v > 0 for _, _, v in points)
    if ann["num_keypoints"] != labelled:
        messages.append((f"has num_keypoints {ann['num_keypoints']!r} but {labelled} labelled keypoints (v > 0)",
                         "set num_keypoints to the number of keypoints with v > 0"))
    return messages + _placement_messages(points, names, ann["bbox"], size)


def _more(indices: list[int]) -> str:
    return f" (and {len(indices) - 1} more keypoints)" if len(indices) > 1 else ""


def _placement_messages(points: list, names: list[str], box: Any, size: tuple[int, int]) -> list[tuple[str, str]]:
    """Labelled points outside the image; visible (v=2) points outside their box by more than BOX_TOLERANCE (hidden
    ones are guessed and may lie beyond the visible extent a box is drawn from)."""
    width, height = size
    for j, (x, y, v) in enumerate(points):
        if v > 0 and not (-EDGE_TOLERANCE <= x <= width + EDGE_TOLERANCE and
                          -EDGE_TOLERANCE <= y <= height + EDGE_TOLERANCE):
            return [(f"keypoint {j + 1} ({names[j]}) at ({x:g}, {y:g}) lies outside the {width}x{height} image",
                     "keypoints are image pixel coordinates; unlabel points outside the image (0, 0, 0)")]
    if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box))):
        return []
    bx, by, bw, bh = box
    tx, ty = (max(BOX_TOLERANCE[0], BOX_TOLERANCE[1] * side) for side in (bw, bh))
    for j, (x, y, v) in enumerate(points):
        if v == 2 and not (bx - tx <= x <= bx + bw + tx and by - ty <= y <= by + bh + ty):
            return [(f"keypoint {j + 1} ({names[j]}) at ({x:g}, {y:g}) lies outside its bbox {box}",
                     "fix the point or the box (a person's box encloses its visible keypoints)")]
    return []


# --- flip map ----------------------------------------------------------------------------------------------------
def flip_permutation(names: Sequence[str], given: Any = None) -> list[int]:
    """perm[k] = the index keypoint k becomes after a horizontal flip: left/right named pairs swapped (`left_*`,
    `l_*`, `*_l`, or `left`/`right` anywhere in the name), others kept; `given` (dataset.flip_map: [a, b] pairs of
    names or indices, or a list of K indices) replaces the names' pairing."""
    names = list(names)
    perm = _given_permutation(names, given) if given is not None else _named_permutation(names)
    if any(perm[perm[k]] != k for k in range(len(names))):
        raise CvtoolError(f"flip map {perm} is not its own inverse (flipping twice must restore every keypoint)",
                          where=FLIP_WHERE, fix="pair every keypoint with at most one other, both ways")
    return perm


def mirror_name(name: str) -> str:
    """The name with its side word swapped (left <-> right, l <-> r as a word), case kept; itself if it has none."""
    tokens = re.split(r"([^A-Za-z0-9]+)", name)
    swapped = [_same_case(t, _SIDE_WORDS[t.lower()]) if t.lower() in _SIDE_WORDS else t for t in tokens]
    if swapped != tokens:
        return "".join(swapped)
    return re.sub("left|right", lambda m: _same_case(m.group(), _SIDE_WORDS[m.group().lower()]), name,
                  flags=re.IGNORECASE)


def _same_case(original: str, word: str) -> str:
    if original.isupper():
        return word.upper()
    return word.capitalize() if original[0].isupper() else word


def _named_permutation(names: list[str]) -> list[int]:
    index = {n: k for k, n in enumerate(names)}
    folded = {n.lower(): k for k, n in enumerate(names)}
    perm = []
    for k, name in enumerate(names):
        mirror = mirror_name(name)
        partner = index.get(mirror, folded.get(mirror.lower())) if mirror != name else k
        if partner is None:
            raise CvtoolError(f"keypoint {name!r} has no mirror keypoint {mirror!r} to swap with in a flip",
                              where=FLIP_WHERE, fix="name both sides, or set dataset.flip_map=[[a, b], ...]")
        perm.append(partner)
    return perm


def _given_permutation(names: list[str], given: Any) -> list[int]:
    entries = list(given)
    k = len(names)
    if entries and all(is_integer(e) for e in entries):
        if sorted(entries) != list(range(k)):
            raise CvtoolError(f"flip map {entries} is not a permutation of 0..{k - 1}", where=FLIP_WHERE,
                              fix=f"list the index each of the {k} keypoints becomes, or [a, b] name pairs")
        return entries
    perm, paired = list(range(k)), set()
    for pair in entries:
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise CvtoolError(f"flip map entry {pair!r} is not a pair [a, b]", where=FLIP_WHERE,
                              fix="list [left name, right name] pairs, or the index each keypoint becomes")
        a, b = (_keypoint_index(names, v) for v in pair)
        if {a, b} & paired:
            raise CvtoolError(f"flip map pairs keypoint {names[a] if a in paired else names[b]!r} twice",
                              where=FLIP_WHERE, fix="pair every keypoint at most once")
        paired |= {a, b}
        perm[a], perm[b] = b, a
    return perm


def _keypoint_index(names: list[str], value: Any) -> int:
    if is_integer(value) and 0 <= value < len(names):
        return value
    if isinstance(value, str) and value in names:
        return names.index(value)
    raise CvtoolError(f"flip map names {value!r}, not a keypoint", where=FLIP_WHERE,
                      fix=f"use keypoint names ({', '.join(names)}) or 0-based indices")


def __getattr__(name: str) -> Any:
    """The dataset classes, imported on first use (they need torch; reading annotations does not)."""
    if name in _LAZY:
        from . import keypoint_sets

        return getattr(keypoint_sets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Problem", "check_structure", "find_problems", "flip_permutation", "keypoint_problems",
           "load_keypoint_instances", "mirror_name", "read_keypoint_json", *_LAZY]
