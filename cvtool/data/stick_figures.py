"""Embedded keypoint data: articulated stick figures written as COCO person keypoints (images + JSON).

Every figure faces the viewer, so its anatomical left joints lie on the image-right side of its torso (as for a
person facing the camera): a horizontal flip with left/right labels swapped shows a figure that obeys the same rule.
The two sides are drawn in a warm and a cool hue family, which side gets which chosen at random per figure (a fixed
colour per side would contradict flipped images), so each limb chain can be traced by its colour. Keypoints are
continuous pixel coordinates (the centre of pixel column c is x = c + 0.5), so a flip maps x to W - x exactly.
Image i of split s is drawn from its own generator `default_rng([seed, s, i])`, like the shapes data.
"""

from __future__ import annotations

import colorsys
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from cvtool.data.shapes_draw import NOISE_SIGMA, SUPERSAMPLE, background
from cvtool.errors import CvtoolError

KEYPOINT_NAMES = ("head", "neck", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
                  "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
SKELETON = ((1, 2), (2, 3), (2, 4), (3, 5), (5, 7), (4, 6), (6, 8), (3, 9), (4, 10), (9, 10), (9, 11), (11, 13),
            (10, 12), (12, 14))  # 1-based, as COCO writes it
_LIMB_SIDE = "CLRLLRRCCCLLRR"  # per SKELETON edge: drawn in the left (L), right (R) or torso (C) colour
SPLITS = ("train", "val")

# Body proportions in units of the figure's standing height (head top to ankles = 1).
TORSO, NECK_HEAD, HEAD_RADIUS, SHOULDER, HIP = 0.33, 0.12, 0.07, 0.10, 0.06
UPPER_ARM, FOREARM, THIGH, SHIN = 0.17, 0.155, 0.245, 0.235
LEAN = 25.0  # degrees the torso leans at most
FORESHORTENING = (0.75, 1.1)  # each limb segment's length is scaled by a factor in this range
ARM, ELBOW, LEG, KNEE = (-40.0, 170.0), 150.0, (-20.0, 70.0), 110.0  # joint angles (degrees), see _pose

DROP_RATE = 0.03  # labelled joints left unlabelled (v=0) at random, as annotators miss some
MIN_INSIDE = 6  # a figure is placed with at least this many joints inside the image
MAX_FIGURE_IOU = 0.3  # figure boxes overlap at most this much (unless 50 placements failed)
OUTSIDE = 0.3  # a figure may stick out of the image by up to this fraction of its width/height
WARM, COOL = (-30.0, 50.0), (170.0, 260.0)  # hue ranges (degrees) of the two side families


@dataclass(frozen=True)
class Figure:
    """A placed figure: joints (K, 2) in continuous pixels, head radius and limb thickness in pixels."""

    joints: np.ndarray
    head_radius: float
    thickness: int

    def extent(self) -> np.ndarray:
        """(x0, y0, x1, y1) of everything drawn."""
        pad = max(self.head_radius, self.thickness)
        return np.concatenate([self.joints.min(axis=0) - pad, self.joints.max(axis=0) + pad])


def _direction(angle: float, right: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Unit vector `angle` degrees from the torso's down direction towards its image-right side."""
    t = np.deg2rad(angle)
    return np.sin(t) * right + np.cos(t) * down


def _pose(rng: np.random.Generator, height: float) -> np.ndarray:
    """Joints (K, 2) of a random pose relative to the pelvis; left joints on the torso's image-right side."""
    lean = np.deg2rad(rng.uniform(-LEAN, LEAN))
    right, down = np.array([np.cos(lean), np.sin(lean)]), np.array([-np.sin(lean), np.cos(lean)])
    joints = np.zeros((len(KEYPOINT_NAMES), 2))
    joints[1] = -TORSO * height * down
    joints[0] = joints[1] + NECK_HEAD * height * _direction(180 + rng.uniform(-LEAN, LEAN), right, down)
    for side, sign in ((0, 1.0), (1, -1.0)):  # left (image right of the torso), then right
        joints[2 + side] = joints[1] + sign * SHOULDER * height * right + 0.02 * height * down
        joints[8 + side] = sign * HIP * height * right
        for root, first, second, bend in ((2, ARM, (UPPER_ARM, FOREARM), ELBOW), (8, LEG, (THIGH, SHIN), KNEE)):
            angle = sign * rng.uniform(*first)
            middle = joints[root + side] + _segment(rng, height * second[0]) * _direction(angle, right, down)
            angle += rng.choice((-1.0, 1.0)) * rng.uniform(0, bend)
            joints[root + 2 + side] = middle
            joints[root + 4 + side] = middle + _segment(rng, height * second[1]) * _direction(angle, right, down)
    return joints


def _segment(rng: np.random.Generator, length: float) -> float:
    return length * rng.uniform(*FORESHORTENING)


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


def _inside(points: np.ndarray, size: int) -> np.ndarray:
    return np.all((points >= 0) & (points < size), axis=-1)


def _place(rng: np.random.Generator, size: int, heights: tuple[float, float], placed: list[Figure]) -> Figure:
    """A random figure with at least MIN_INSIDE joints in the image, overlapping earlier ones little (after 50
    tries: as it falls)."""
    for attempt in range(200):
        height = rng.uniform(*heights)
        figure = Figure(_pose(rng, height), HEAD_RADIUS * height, int(rng.integers(2, 5)))
        low, high = figure.extent()[:2], figure.extent()[2:]
        margin = OUTSIDE * (high - low)
        figure = Figure(figure.joints + rng.uniform(-low - margin, size - high + margin), figure.head_radius,
                        figure.thickness)
        if _inside(figure.joints, size).sum() >= MIN_INSIDE and (attempt >= 50 or all(
                _box_iou(figure.extent(), other.extent()) <= MAX_FIGURE_IOU for other in placed)):
            return figure
    centre = (figure.joints.min(axis=0) + figure.joints.max(axis=0)) / 2
    return Figure(figure.joints + size / 2 - centre, figure.head_radius, figure.thickness)


def _colour(rng: np.random.Generator, hues: tuple[float, float] | None, under: np.ndarray) -> tuple[int, ...]:
    """The most contrasting (to the mean colour `under`) of 6 random colours of a hue family (None: neutral)."""
    if hues is None:
        hsv = rng.uniform((0.0, 0.0, 0.05), (1.0, 0.15, 0.95), (6, 3))
    else:
        hsv = rng.uniform((hues[0] / 360, 0.55, 0.45), (hues[1] / 360, 1.0, 1.0), (6, 3))
    candidates = np.array([colorsys.hsv_to_rgb(h % 1.0, s, v) for h, s, v in hsv.tolist()]) * 255
    best = candidates[np.argmax(np.linalg.norm(candidates - under, axis=1))]
    return tuple(int(v) for v in np.rint(best))


def _draw_figure(draws: tuple[ImageDraw.ImageDraw, ImageDraw.ImageDraw], figure: Figure, index: int,
                 colours: dict[str, tuple[int, ...]]) -> None:
    """Limbs, head and joint discs at SUPERSAMPLE x scale, on the image and (value index + 1) on the index map."""
    s = SUPERSAMPLE
    points = (figure.joints * s - 0.5).tolist()  # PIL's sub-pixel k has its centre at (k + 0.5) / s image pixels
    width, disc = figure.thickness * s, (figure.thickness / 2 + 1) * s
    image, index_map = draws
    for (a, b), side in zip(SKELETON, _LIMB_SIDE, strict=True):
        line = [tuple(points[a - 1]), tuple(points[b - 1])]
        image.line(line, fill=colours[side], width=width)
        index_map.line(line, fill=index + 1, width=width)
    discs = [(points[0], figure.head_radius * s, colours["C"])] + [(p, disc, colours["J"]) for p in points[1:]]
    for (x, y), radius, colour in discs:
        image.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
        index_map.ellipse((x - radius, y - radius, x + radius, y + radius), fill=index + 1)


def _occluder(rng: np.random.Generator, figure: Figure) -> tuple[float, ...]:
    """A rectangle (x0, y0, x1, y1) over part of the figure: 25-60 % of its extent each way, around a joint."""
    extent = figure.extent()
    size = rng.uniform(0.25, 0.6, 2) * (extent[2:] - extent[:2])
    centre = figure.joints[rng.integers(len(figure.joints))] + rng.uniform(-0.5, 0.5, 2) * size
    return (*(centre - size / 2), *(centre + size / 2))


def _annotation(figure: Figure, visible: np.ndarray, size: int) -> dict[str, Any]:
    """keypoints [x, y, v] x K (unlabelled: 0, 0, 0), num_keypoints, bbox of the labelled joints (+ limb thickness
    and head radius), its area."""
    keypoints = np.zeros((len(KEYPOINT_NAMES), 3))
    labelled = visible > 0
    keypoints[labelled, :2] = np.round(figure.joints[labelled], 2)
    keypoints[labelled, 2] = visible[labelled]
    pad = figure.thickness / 2 + 1
    low, high = keypoints[labelled, :2].min(axis=0) - pad, keypoints[labelled, :2].max(axis=0) + pad
    if labelled[0]:
        low, high = np.minimum(low, figure.joints[0] - figure.head_radius), np.maximum(
            high, figure.joints[0] + figure.head_radius)
    low, high = np.clip(low, 0, size), np.clip(high, 0, size)
    box = [round(float(low[0]), 2), round(float(low[1]), 2), round(float(high[0] - low[0]), 2),
           round(float(high[1] - low[1]), 2)]
    return {"keypoints": [float(v) if k % 3 < 2 else int(v) for k, v in enumerate(keypoints.ravel())],
            "num_keypoints": int(labelled.sum()), "bbox": box, "area": round(box[2] * box[3], 4)}


def _visibility(rng: np.random.Generator, figure: Figure, index: int, index_map: Image.Image, size: int) -> np.ndarray:
    """Per joint: 2 drawn on top, 1 covered by a later figure or an occluder, 0 outside the image or dropped."""
    inside = _inside(figure.joints, size)
    cells = np.clip(np.floor(figure.joints * SUPERSAMPLE).astype(int), 0, size * SUPERSAMPLE - 1).tolist()
    on_top = np.array([index_map.getpixel(tuple(cell)) == index + 1 for cell in cells])
    visible = np.where(inside, np.where(on_top, 2, 1), 0)
    dropped = (rng.random(len(visible)) < DROP_RATE) & (visible > 0)
    if (visible > 0).sum() - dropped.sum() >= MIN_INSIDE // 2:
        visible[dropped] = 0
    return visible


def _figure_colours(rng: np.random.Generator, canvas: np.ndarray, figure: Figure) -> dict[str, tuple[int, ...]]:
    """Colours of the left (L) and right (R) limbs, torso and head (C) and joints (J), contrasting with the
    background under the figure; which side gets the warm family is a coin flip (see the module docstring)."""
    x0, y0, x1, y1 = np.clip(np.rint(figure.extent()), 0, canvas.shape[0] - 1).astype(int)
    under = canvas[y0:y1 + 1, x0:x1 + 1].reshape(-1, 3).mean(axis=0)
    warm_left = rng.random() < 0.5
    colours = {"L": _colour(rng, WARM if warm_left else COOL, under),
               "R": _colour(rng, COOL if warm_left else WARM, under), "C": _colour(rng, None, under)}
    colours["J"] = tuple(int(v * 0.6) for v in colours["C"])
    return colours


def _scene(rng: np.random.Generator, size: int, counts: tuple[int, int], heights: tuple[float, float],
           occlusion: float) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """One image (uint8 H x W x 3) and its figures' annotations."""
    canvas = background(rng, size)
    figures: list[Figure] = []
    for _ in range(int(rng.integers(counts[0], counts[1] + 1))):
        figures.append(_place(rng, size, heights, figures))
    big = size * SUPERSAMPLE
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8)).resize((big, big), Image.NEAREST)
    index_map = Image.new("L", (big, big))
    draws = (ImageDraw.Draw(image), ImageDraw.Draw(index_map))
    for index, figure in enumerate(figures):
        _draw_figure(draws, figure, index, _figure_colours(rng, canvas, figure))
    for figure in figures:
        if rng.random() < occlusion:
            rect = tuple(v * SUPERSAMPLE - 0.5 for v in _occluder(rng, figure))
            draws[0].rectangle(rect, fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
            draws[1].rectangle(rect, fill=255)
    pixels = np.asarray(image.reduce(SUPERSAMPLE), dtype=np.float32)
    pixels = pixels + rng.uniform(*NOISE_SIGMA) * rng.standard_normal(pixels.shape, dtype=np.float32)
    annotations = [_annotation(f, _visibility(rng, f, k, index_map, size), size) for k, f in enumerate(figures)]
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8), annotations


def _figure_image(root: Path, size: int, counts: tuple[int, int], heights: tuple[float, float], occlusion: float,
                  seed: int, job: tuple[int, int, str]) -> list[dict[str, Any]]:
    split_index, i, name = job
    image, annotations = _scene(np.random.default_rng([seed, split_index, i]), size, counts, heights, occlusion)
    Image.fromarray(image).save(root / "images" / SPLITS[split_index] / name, compress_level=1)
    return annotations


CATEGORY = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
            "skeleton": [list(pair) for pair in SKELETON]}


def _coco(names: list[str], figures: list[list[dict[str, Any]]], size: int) -> dict[str, Any]:
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [CATEGORY]}
    for image_id, (name, anns) in enumerate(zip(names, figures, strict=True), start=1):
        coco["images"].append({"id": image_id, "file_name": name, "width": size, "height": size})
        for ann in anns:
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                                        **ann, "iscrowd": 0, "segmentation": []})
    return coco


def _check(image_size: int, min_figures: int, max_figures: int, min_height: float, max_height: float,
           occlusion: float) -> None:
    if not 1 <= min_figures <= max_figures:
        raise CvtoolError(f"stick figures need 1 <= min_figures <= max_figures, got {min_figures}, {max_figures}",
                          fix="adjust dataset.synth.min_figures/max_figures")
    if not 10 <= min_height <= max_height <= 2 * image_size:
        raise CvtoolError(f"stick figures need 10 <= min_height <= max_height <= 2 x image_size, got {min_height}, "
                          f"{max_height}, {image_size}", fix="adjust dataset.synth.min_height/max_height")
    if not 0 <= occlusion <= 1:
        raise CvtoolError(f"stick figure occlusion is a probability, got {occlusion}",
                          fix="set dataset.synth.occlusion in [0, 1]")


def generate_keypoints(root: Path, *, num_train: int, num_val: int, image_size: int = 128, min_figures: int = 1,
                       max_figures: int = 3, min_height: float = 35, max_height: float = 110,
                       occlusion: float = 0.3, seed: int = 0) -> Path:
    """COCO person keypoints: `root/images/<split>/<000001>.png`, `root/annotations/person_keypoints_<split>.json`
    (image ids 1..N per split), 1-3 stick figures per image of 14 named joints (KEYPOINT_NAMES, SKELETON)."""
    from cvtool.data.shapes import _check_params, _jobs, _map_images  # shapes registers this generator

    root = Path(root)
    counts = {"num_train": num_train, "num_val": num_val}
    _check_params(image_size, 4, 4, counts)
    _check(image_size, min_figures, max_figures, min_height, max_height, occlusion)
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    jobs = _jobs(counts, lambda _, i: f"{i + 1:06d}.png")
    work = functools.partial(_figure_image, root, image_size, (min_figures, max_figures), (min_height, max_height),
                             occlusion, seed)
    figures = _map_images(work, jobs, "generating stick figures (keypoints)")
    for split_index, split in enumerate(SPLITS):
        mine = [(name, anns) for (s, _, name), anns in zip(jobs, figures, strict=True) if s == split_index]
        coco = _coco([name for name, _ in mine], [anns for _, anns in mine], image_size)
        with open(root / "annotations" / f"person_keypoints_{split}.json", "w") as f:
            json.dump(coco, f, separators=(",", ":"))
    return root
