"""Embedded identity data: glyphs of an invented alphabet (Omniglot-like), written in the LFW layout.

An identity is one glyph: 3-5 strokes (lines, bends, curves, small rings, dots, polygons) in a unit frame. A new
glyph is redrawn while its 24 x 24 coverage overlaps an earlier glyph's by IoU > MAX_GLYPH_IOU at any rotation within
twice the nuisance range, mirrored or not, so no two identities can be confused by a pose (or by flip augmentation).
Every image renders its identity's glyph under nuisances that carry no identity: handwriting-like jitter of each
control point and stroke width, rotation, scale, translation, a random colour contrasting with a random background,
Gaussian noise and sometimes a mild blur. Identity i's image count and glyph come from `default_rng([seed, i])`, its
image number n (from 1) from `default_rng([seed, i, n])`, so files are byte-identical whatever the worker count.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cvtool.data.shapes_draw import NOISE_SIGMA, SUPERSAMPLE, background
from cvtool.errors import CvtoolError

LINE, BEND, CURVE, RING, DOT, POLYGON = "line", "bend", "curve", "ring", "dot", "polygon"
LONG_KINDS, LONG_WEIGHTS = (LINE, BEND, CURVE), (0.35, 0.25, 0.4)
KINDS, WEIGHTS = (LINE, BEND, CURVE, RING, DOT, POLYGON), (0.25, 0.15, 0.3, 0.1, 0.1, 0.1)
STROKES = (3, 5)  # strokes per glyph; the first is a long one, at most MAX_SMALL are rings, dots or polygons
MAX_SMALL = 2
MAX_POINTS = 4  # control points of a stroke, at most
ATTACH = 0.6  # probability that a stroke starts on an earlier stroke (connected, character-like glyphs)
DOT_RADIUS = 0.07  # glyph extents

MAX_GLYPH_IOU = 0.5  # distinctness: largest coverage IoU between two identities' glyphs ...
CHECK_SIZE, CHECK_EXTENT, CHECK_WIDTH = 24, 16, 0.12  # ... rasterised at 24 px, glyph 16 px, strokes 0.12 extents ...
CHECK_ANGLES = tuple(range(-60, 61, 15))  # ... at every relative rotation the nuisances can produce, and mirrored
CANONICAL = CHECK_ANGLES.index(0)  # the unrotated, unmirrored row of glyph_poses
MAX_OVERLAP = 0.2  # legibility: at most this share of the strokes' check coverage may lie under other strokes
MAX_ATTEMPTS = 200

ROTATION = 30.0  # degrees either way
SCALE = (0.7, 1.05)  # glyph extent (longer side) as a share of the frame ...
FRAME = 0.62  # ... whose side is this share of the image: with rotation and stroke width, the glyph's box spans
#               a median 62 % of the image side (90 % of images: 48-77 %)
SHIFT = 0.1  # translation, share of the image side either way (kept inside the image)
JITTER = 0.025  # standard deviation of every control point, in glyph extents (handwriting-like variation)
WIDTH = (0.04, 0.06)  # stroke width, share of the image side (2.6-3.8 px at 64 px) ...
WIDTH_JITTER = 0.15  # ... times 1 +- this per stroke
INK_CANDIDATES = 8  # the glyph's colour: the most contrasting of this many random colours
BLUR_PROBABILITY, BLUR_RADIUS = 0.25, (0.3, 0.8)  # px


@dataclass(frozen=True)
class Stroke:
    """One stroke: its kind and control points (k, 2), in glyph units (the glyph's longer side spans 1).

    line: 2 ends; bend: 3 corners; curve: a cubic Bezier's 4 control points; ring: centre and a rim point;
    dot: centre; polygon: its 3 or 4 vertices."""

    kind: str
    points: np.ndarray


Glyph = tuple[Stroke, ...]


def _direction(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def _control_points(rng: np.random.Generator, kind: str, start: np.ndarray) -> np.ndarray:
    """Control points of a random stroke of `kind` starting at (or centred on) `start`, in the unit frame."""
    angle = rng.uniform(0, 2 * np.pi)
    if kind == LINE:
        return np.stack([start, start + rng.uniform(0.5, 1.0) * _direction(angle)])
    if kind == BEND:
        corner = start + rng.uniform(0.3, 0.6) * _direction(angle)
        turn = rng.choice((-1.0, 1.0)) * np.deg2rad(rng.uniform(60, 150))
        return np.stack([start, corner, corner + rng.uniform(0.3, 0.6) * _direction(angle + turn)])
    if kind == CURVE:  # both handles on one side: an arc or hook; on opposite sides (30 %): an S
        chord = rng.uniform(0.35, 0.8)
        end = start + chord * _direction(angle)
        side = rng.choice((-1.0, 1.0))
        other = -side if rng.random() < 0.3 else side
        bulge = np.deg2rad(rng.uniform(30, 80, 2))
        handles = chord * rng.uniform(0.4, 0.9, 2)
        return np.stack([start, start + handles[0] * _direction(angle + side * bulge[0]),
                         end + handles[1] * _direction(angle + np.pi - other * bulge[1]), end])
    if kind == RING:
        return np.stack([start, start + rng.uniform(0.1, 0.2) * _direction(angle)])
    if kind == DOT:
        return start[None]
    corners = int(rng.integers(3, 5))  # polygon
    return start + rng.uniform(0.12, 0.22) * np.stack([_direction(angle + 2 * np.pi * k / corners)
                                                       for k in range(corners)])


_T = np.linspace(0, 1, 12)[:, None]
_BEZIER = np.hstack([(1 - _T) ** 3, 3 * (1 - _T) ** 2 * _T, 3 * (1 - _T) * _T ** 2, _T ** 3])  # (12, 4) weights
_ANGLES = np.linspace(0, 2 * np.pi, 16, endpoint=False)
_CIRCLE = np.stack([np.cos(_ANGLES), np.sin(_ANGLES)], axis=1)  # a ring is drawn as a 16-gon


def _path(stroke: Stroke) -> tuple[np.ndarray, bool]:
    """(points (n, 2) of the drawn polyline, closed); a dot's one point is its centre."""
    p = stroke.points
    if stroke.kind == CURVE:
        return _BEZIER @ p, False
    if stroke.kind == RING:
        return p[0] + np.linalg.norm(p[1] - p[0]) * _CIRCLE, True
    return p, stroke.kind == POLYGON


def _kind(rng: np.random.Generator, strokes: list[Stroke]) -> str:
    small = sum(s.kind in (RING, DOT, POLYGON) for s in strokes)
    if not strokes or small >= MAX_SMALL:
        return str(rng.choice(LONG_KINDS, p=LONG_WEIGHTS))
    return str(rng.choice(KINDS, p=WEIGHTS))


def random_glyph(rng: np.random.Generator) -> Glyph:
    """A random glyph, centred on its drawn extent and scaled so that its longer side is 1."""
    strokes: list[Stroke] = []
    for _ in range(int(rng.integers(STROKES[0], STROKES[1] + 1))):
        kind = _kind(rng, strokes)
        if strokes and rng.random() < ATTACH:
            path = _path(strokes[int(rng.integers(len(strokes)))])[0]
            start = path[int(rng.integers(len(path)))]
        else:
            start = rng.uniform(-0.4, 0.4, 2)
        strokes.append(Stroke(kind, _control_points(rng, kind, start)))
    drawn = np.concatenate([_path(s)[0] for s in strokes])
    low, high = drawn.min(axis=0), drawn.max(axis=0)
    return tuple(Stroke(s.kind, (s.points - (low + high) / 2) / (high - low).max()) for s in strokes)


def _draw(glyph: Glyph, transform: np.ndarray, offset: np.ndarray, widths: np.ndarray, dot_radius: float,
          size: int) -> Image.Image:
    """`glyph` mapped to pixels by `points @ transform.T + offset`, strokes of `widths` px with round ends and joints,
    dots of `dot_radius` px, drawn at SUPERSAMPLE x the resolution of a `size` px square (L image, ink 255)."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s))
    draw = ImageDraw.Draw(canvas)
    for stroke, width in zip(glyph, widths):
        points, closed = _path(stroke)
        # PIL samples sub-pixel k at coordinate k; its centre is at (k + 0.5) / s in image units.
        points = (points @ transform.T + offset) * s - 0.5
        radius = (dot_radius if stroke.kind == DOT else width / 2) * s
        if stroke.kind != DOT:
            line = np.concatenate([points, points[:1]]) if closed else points
            draw.line([tuple(p) for p in line.tolist()], fill=255, width=max(1, round(2 * radius)))
        for x, y in points.tolist():  # round ends and joints (cheaper than PIL's joint="curve")
            draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=255)
    return canvas


def _coverage(canvas: Image.Image) -> np.ndarray:
    """Coverage (float32, 0..1) of a supersampled drawing: the box-filtered mean of its sub-pixels."""
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255


def _rotation(degrees: float) -> np.ndarray:
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _check_strokes(glyph: Glyph) -> list[Image.Image]:
    """Each stroke of the distinctness check's rendering (supersampled): CHECK_SIZE px, glyph centred, longer
    side CHECK_EXTENT px, strokes CHECK_WIDTH extents wide."""
    transform, offset = CHECK_EXTENT * np.eye(2), np.full(2, CHECK_SIZE / 2)
    return [_draw((stroke,), transform, offset, np.array([CHECK_WIDTH * CHECK_EXTENT]), DOT_RADIUS * CHECK_EXTENT,
                  CHECK_SIZE) for stroke in glyph]


def _overlap(strokes: list[Image.Image]) -> float:
    masks = np.stack([_coverage(stroke) >= 0.5 for stroke in strokes])
    return 1 - masks.any(axis=0).sum() / masks.sum()


def _poses(strokes: list[Image.Image]) -> np.ndarray:
    """Check masks of the union of `strokes` at each pose: every inked sub-pixel centre is rotated (and mirrored)
    about the centre and counted in the pixel it lands in; a pixel is inked when half its sub-pixels' worth land."""
    s, n = SUPERSAMPLE, CHECK_SIZE
    rows, cols = np.nonzero(np.maximum.reduce([np.asarray(stroke) for stroke in strokes]))
    points = np.stack([(cols + 0.5) / s, (rows + 0.5) / s]) - n / 2
    transforms = np.stack([_rotation(angle) * (-1.0 if mirrored else 1.0, 1.0)
                           for mirrored in (False, True) for angle in CHECK_ANGLES])
    x, y = np.floor(transforms @ points + n / 2).astype(np.int64).transpose(1, 0, 2)
    pose = np.broadcast_to(np.arange(len(transforms))[:, None], x.shape)
    inside = (x >= 0) & (x < n) & (y >= 0) & (y < n)
    counts = np.bincount((pose * n * n + y * n + x)[inside], minlength=len(transforms) * n * n)
    return counts.reshape(len(transforms), n * n) >= s * s / 2


def glyph_overlap(glyph: Glyph) -> float:
    """Share of the strokes' summed check coverage hidden under other strokes (0: no two strokes touch)."""
    return _overlap(_check_strokes(glyph))


def glyph_poses(glyph: Glyph) -> np.ndarray:
    """The distinctness check's views of a glyph: (2 * len(CHECK_ANGLES), CHECK_SIZE ** 2) flattened bool masks
    (coverage >= 0.5) rotated by each of CHECK_ANGLES degrees, then the same mirrored; row CANONICAL is unrotated."""
    return _poses(_check_strokes(glyph))


def glyph_iou(masks: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU (a, b) of every flattened bool mask in `masks` (a, n) with every one in `others` (b, n)."""
    return _packed_iou(np.packbits(masks, axis=1), np.packbits(others, axis=1))


def _packed_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # bit counts, not a float matmul: BLAS threads stall when other processes hold the cores
    inter = np.bitwise_count(a[:, None] & b[None]).sum(axis=2, dtype=np.int64)
    areas = np.bitwise_count(a).sum(axis=1, dtype=np.int64)[:, None] + np.bitwise_count(b).sum(axis=1, dtype=np.int64)
    return inter / np.maximum(areas - inter, 1)


def distinct_glyphs(seed: int, count: int, images: tuple[int, int]) -> list[tuple[int, Glyph]]:
    """(image count, glyph) of identities 0..count-1: identity i's count uniform in `images` (inclusive), then its
    glyph, both from `default_rng([seed, i])`; a glyph whose strokes overlap each other by more than MAX_OVERLAP,
    or that overlaps an earlier glyph (see the module docstring), is redrawn from the same generator."""
    canonical = np.zeros((count, CHECK_SIZE * CHECK_SIZE // 8), dtype=np.uint8)  # packed bits
    identities = []
    for i in range(count):
        rng = np.random.default_rng([seed, i])
        number = int(rng.integers(images[0], images[1] + 1))
        for _ in range(MAX_ATTEMPTS):
            glyph = random_glyph(rng)
            strokes = _check_strokes(glyph)
            if _overlap(strokes) > MAX_OVERLAP:
                continue
            poses = _poses(strokes)
            if i == 0 or _packed_iou(np.packbits(poses, axis=1), canonical[:i]).max() <= MAX_GLYPH_IOU:
                break
        else:
            raise CvtoolError(f"could not draw {count} distinct glyphs (identity {i + 1} failed {MAX_ATTEMPTS} times)",
                              where="dataset.synth.num_identities", fix="lower dataset.synth.num_identities")
        canonical[i] = np.packbits(poses[CANONICAL])
        identities.append((number, glyph))
    return identities


def jitter(rng: np.random.Generator, glyph: Glyph) -> Glyph:
    """A handwritten-like variant of `glyph`: every control point moved by a normal offset of sd JITTER."""
    return tuple(Stroke(s.kind, s.points + rng.normal(0, JITTER, s.points.shape)) for s in glyph)


def glyph_coverage(rng: np.random.Generator, glyph: Glyph, size: int) -> np.ndarray:
    """Coverage (float32, size x size) of one handwritten-like rendering of `glyph`: jittered control points and
    stroke widths, random rotation, scale and translation, fully inside the image."""
    jittered = jitter(rng, glyph)
    transform = rng.uniform(*SCALE) * FRAME * size * _rotation(rng.uniform(-ROTATION, ROTATION))
    widths = rng.uniform(*WIDTH) * size * rng.uniform(1 - WIDTH_JITTER, 1 + WIDTH_JITTER, len(glyph))
    dot_radius = max(DOT_RADIUS * abs(np.linalg.det(transform)) ** 0.5, 0.4 * widths.max())
    drawn = np.concatenate([_path(s)[0] for s in jittered]) @ transform.T
    margin = max(widths.max() / 2, dot_radius) + 0.5
    low, high = drawn.min(axis=0) - margin, drawn.max(axis=0) + margin
    offset = size / 2 + rng.uniform(-SHIFT, SHIFT, 2) * size
    offset = np.where(high - low < size, np.clip(offset, -low, size - high), (size - low - high) / 2)
    return _coverage(_draw(jittered, transform, offset, widths, dot_radius, size))


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def ink_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """The most contrasting of INK_CANDIDATES random RGB colours with the pixels `under` (k, 3): the one whose
    Euclidean distance to 3/4 of them is largest (thin strokes on a texture need contrast with most of it)."""
    under = under[:: max(1, len(under) // 64)]
    candidates = rng.uniform(0, 255, (INK_CANDIDATES, 3)).astype(np.float32)
    squared = ((candidates[:, None] - under[None]) ** 2).sum(axis=2)
    quartile = len(under) // 4  # the squared distance exceeded by 3/4 of the pixels
    return candidates[np.argmax(np.partition(squared, quartile, axis=1)[:, quartile])]


def paint(rng: np.random.Generator, alpha: np.ndarray) -> np.ndarray:
    """An RGB uint8 image of coverage `alpha` in a colour contrasting with a random background, sometimes mildly
    blurred, with Gaussian pixel noise."""
    canvas = background(rng, alpha.shape[0])
    colour = ink_colour(rng, canvas[alpha >= alpha.max() / 2])
    canvas += alpha[..., None] * (colour - canvas)
    if rng.random() < BLUR_PROBABILITY:
        blurred = Image.fromarray(_to_uint8(canvas)).filter(ImageFilter.GaussianBlur(rng.uniform(*BLUR_RADIUS)))
        canvas = np.asarray(blurred, dtype=np.float32)
    canvas = canvas + rng.uniform(*NOISE_SIGMA) * rng.standard_normal(canvas.shape, dtype=np.float32)
    return _to_uint8(canvas)


def identity_name(index: int) -> str:
    """Folder name of 0-based identity `index`: glyph_0001, glyph_0002, ..."""
    return f"glyph_{index + 1:04d}"


def _pack(glyphs: list[Glyph]) -> np.ndarray:
    """All glyphs as one float array, a cheap argument for worker processes (a list of small arrays costs ~100x
    more to pickle): a row per stroke (identity, kind index, point count, MAX_POINTS x (x, y) NaN-padded)."""
    table = np.full((sum(map(len, glyphs)), 3 + 2 * MAX_POINTS), np.nan)
    rows = [(i, stroke) for i, glyph in enumerate(glyphs) for stroke in glyph]
    for row, (i, stroke) in zip(table, rows):
        row[:3] = i, KINDS.index(stroke.kind), len(stroke.points)
        row[3:3 + stroke.points.size] = stroke.points.ravel()
    return table


def _unpack(table: np.ndarray, i: int) -> Glyph:
    rows = table[table[:, 0] == i]
    return tuple(Stroke(KINDS[int(row[1])], row[3:3 + 2 * int(row[2])].reshape(-1, 2)) for row in rows)


def _identity_image(root: Path, size: int, seed: int, glyphs: np.ndarray, job: tuple[int, int, str]) -> None:
    i, number, name = job
    rng = np.random.default_rng([seed, i, number])
    image = paint(rng, glyph_coverage(rng, _unpack(glyphs, i), size))
    Image.fromarray(image).save(root / name, quality=95)


def _check(num_identities: int, images: tuple[int, int], image_size: int, test_fraction: float, folds: int) -> None:
    from cvtool.data.identity_folders import split_identities

    if not 1 <= images[0] <= images[1]:
        raise CvtoolError(f"glyph identities need 1 <= min_images <= max_images, got {images[0]}, {images[1]}",
                          where="dataset.synth.min_images", fix="adjust dataset.synth.min_images/max_images")
    if image_size < 16:
        raise CvtoolError(f"glyph identities need image_size >= 16, got {image_size}",
                          where="dataset.synth.image_size", fix="set dataset.synth.image_size to 16 or more")
    if not 0 < test_fraction < 1:
        raise CvtoolError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}",
                          where="dataset.synth.test_fraction", fix="hold out e.g. 0.333 of the identities")
    if folds < 1:
        raise CvtoolError(f"glyph identities need at least one fold, got {folds}", where="dataset.synth.folds",
                          fix="set dataset.synth.folds to 1 or more (LFW: 10)")
    needed = num_identities
    while len(split_identities([identity_name(i) for i in range(needed)], test_fraction, 0)[1]) < 2 * folds:
        needed += 1
    if needed > num_identities:
        raise CvtoolError(f"{num_identities} identities hold out too few test identities for {folds} folds of "
                          f"mismatched pairs (2 identities each)", where="dataset.synth.num_identities",
                          fix=f"set dataset.synth.num_identities to at least {needed} or lower dataset.synth.folds")


def generate_identities(root: Path, *, num_identities: int = 300, min_images: int = 10, max_images: int = 20,
                        image_size: int = 64, test_fraction: float = 1 / 3, folds: int = 10,
                        pairs_per_fold: int = 300, seed: int = 0) -> Path:
    """LFW layout `root/glyph_0001/glyph_0001_0001.jpg` (JPEG quality 95): `num_identities` distinct glyphs with
    `min_images`..`max_images` images each, and `root/pairs.txt` (LFW View 2 format: `folds` folds of
    `pairs_per_fold` matched + mismatched pairs) naming only the test identities of
    `split_identities(names, test_fraction, seed)`."""
    from cvtool.data.identity_folders import split_identities
    from cvtool.data.lfw_pairs import generate_pairs, write_pairs
    from cvtool.data.shapes import _map_images  # shapes registers this generator

    root = Path(root)
    _check(num_identities, (min_images, max_images), image_size, test_fraction, folds)
    identities = distinct_glyphs(seed, num_identities, (min_images, max_images))
    names = [identity_name(i) for i in range(num_identities)]
    _, test = split_identities(names, test_fraction, seed)
    counts = dict(zip(names, (count for count, _ in identities)))
    pairs = generate_pairs({name: range(1, counts[name] + 1) for name in test}, folds=folds,
                           per_fold=pairs_per_fold, seed=seed)
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    jobs = [(i, n, f"{name}/{name}_{n:04d}.jpg") for i, name in enumerate(names) for n in range(1, counts[name] + 1)]
    work = functools.partial(_identity_image, root, image_size, seed, _pack([glyph for _, glyph in identities]))
    _map_images(work, jobs, "generating glyph identities")
    write_pairs(root / "pairs.txt", pairs, folds, pairs_per_fold)
    return root
