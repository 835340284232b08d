"""COCO keypoint results JSON ([{image_id, category_id, keypoints: [x, y, score] x K, score}]), checked against
the ground truth with errors naming the file and the result's index."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cvtool.errors import CvtoolError

from .coco_json import _is_number, check_result_head, read_result_list

KEYPOINT_RESULTS_FIX = ("a keypoint results JSON is a list of {image_id, category_id, score, keypoints: [x1, y1, s1, "
                        "..., xK, yK, sK]} with K the category's number of keypoint names")


def keypoint_counts(gt: dict) -> dict[Any, int]:
    """K of every category of a COCO keypoints ground truth: the length of its `keypoints` names (0 when none)."""
    return {c["id"]: len(c.get("keypoints") or []) for c in gt["categories"]}


def _check_keypoints(r: dict, where: str, k: int) -> None:
    if "keypoints" not in r:
        raise CvtoolError("result lacks 'keypoints'", where=where, fix=KEYPOINT_RESULTS_FIX)
    points = r["keypoints"]
    if not isinstance(points, list):
        raise CvtoolError(f"keypoints is a {type(points).__name__}, not a list", where=where, fix=KEYPOINT_RESULTS_FIX)
    if k == 0:
        raise CvtoolError(f"category_id {r['category_id']!r} has no keypoint names in the ground truth", where=where,
                          fix="give keypoint results only for categories with 'keypoints' names")
    if len(points) != 3 * k:
        raise CvtoolError(f"keypoints has {len(points)} numbers but category_id {r['category_id']!r} has {k} "
                          f"keypoints ({3 * k} numbers: x, y, score each)", where=where, fix=KEYPOINT_RESULTS_FIX)
    bad = next((j for j, v in enumerate(points) if not _is_number(v)), None)
    if bad is not None:
        raise CvtoolError(f"keypoints[{bad}] is {points[bad]!r}, not a finite number", where=where,
                          fix=KEYPOINT_RESULTS_FIX)


def load_keypoint_results(path: str | Path, gt: dict) -> list[dict]:
    """A keypoint results JSON checked against the ground truth's images, categories and keypoint counts."""
    path = Path(path)
    results = read_result_list(path, "COCO keypoint results file", KEYPOINT_RESULTS_FIX)
    images = {im["id"] for im in gt["images"]}
    counts = keypoint_counts(gt)
    for i, r in enumerate(results):
        where = f"{path} [{i}]"
        check_result_head(r, where, images, counts, KEYPOINT_RESULTS_FIX)
        _check_keypoints(r, where, counts[r["category_id"]])
    return results
