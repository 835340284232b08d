"""Drawing primitives of the synthetic shapes dataset: outlines, antialiased coverage, textured backgrounds.

Pixel convention: pixel (row r, col c) covers [c, c+1) x [r, r+1) in continuous image coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")

SUPERSAMPLE = 4  # coverage is rendered at 4x and box-filtered down
MIN_CONTRAST = 60.0  # Euclidean RGB distance between a shape and the mean of what lies under it ...
MIN_PIXEL_CONTRAST = 40.0  # ... and between it and 3/4 of those pixels, so a texture never hides the outline
NOISE_SIGMA = (5.0, 15.0)  # per-pixel Gaussian noise over the whole image, on 0..255


def _regular(n: int, phase: float = 0.0) -> np.ndarray:
    t = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([np.cos(t), np.sin(t)], axis=1)


def _star(points: int = 5, inner: float = 0.45) -> np.ndarray:
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return _regular(2 * points, -np.pi / 2) * radii[:, None]


def _cross(arm: float = 1 / 3) -> np.ndarray:
    a, b = arm / 2, 0.5
    return np.array([(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a),
                     (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)])


# Unit outlines centred on the origin, in SHAPE_CLASSES order; the circle is a 96-gon (sagitta < 0.02 px).
_OUTLINES = (_regular(96), _regular(4, np.pi / 4), _regular(3, -np.pi / 2), _star(), _cross())


def outline(label: int, size: float, angle: float) -> np.ndarray:
    """Vertices (n, 2) of shape `label` rotated by `angle` degrees, scaled to bounding extent `size`."""
    t = np.deg2rad(angle)
    rotation = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    points = _OUTLINES[label] @ rotation.T
    return points * (size / np.ptp(points, axis=0).max())


def coverage(points: np.ndarray, image_size: int) -> np.ndarray:
    """Fraction (float32, H x W) of each pixel covered by the polygon, by supersampled rasterisation."""
    s = SUPERSAMPLE
    x0, y0 = np.maximum(np.floor(points.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(points.max(axis=0)).astype(int) + 1, image_size)
    canvas = Image.new("L", (int(x1 - x0) * s, int(y1 - y0) * s))
    # PIL samples sub-pixel k at coordinate k; its centre is at (k + 0.5) / s in image units.
    local = (points - (x0, y0)) * s - 0.5
    ImageDraw.Draw(canvas).polygon([tuple(p) for p in local], fill=255)
    small = np.asarray(canvas, dtype=np.float32).reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3)) / 255
    alpha = np.zeros((image_size, image_size), dtype=np.float32)
    alpha[y0:y1, x0:x1] = small
    return alpha


def distinct_colour(rng: np.random.Generator, reference: np.ndarray, min_distance: float) -> np.ndarray:
    """A random RGB colour at least `min_distance` from `reference` (else the farthest cube corner)."""
    for _ in range(20):
        colour = rng.uniform(0, 255, 3)
        if np.linalg.norm(colour - reference) >= min_distance:
            return colour
    return np.where(reference < 127.5, 255.0, 0.0)


def shape_colour(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
    """A shape colour contrasting with the pixels (k, 3) it will cover; the most contrasting of 16 random
    candidates when none meets both MIN_CONTRAST and MIN_PIXEL_CONTRAST."""
    under = under[:: max(1, len(under) // 64)]
    candidates = rng.uniform(0, 255, (16, 3)).astype(np.float32)
    to_mean = np.linalg.norm(candidates - under.mean(axis=0), axis=1)
    diff = candidates[:, None] - under[None]
    quartile = len(under) // 4  # distance exceeded by 3/4 of the pixels
    to_pixels = np.sqrt(np.partition(np.einsum("cpk,cpk->cp", diff, diff), quartile, axis=1)[:, quartile])
    ok = (to_mean >= MIN_CONTRAST) & (to_pixels >= MIN_PIXEL_CONTRAST)
    return candidates[np.argmax(ok) if ok.any() else np.argmax(to_pixels)]


def _unit_grid(size: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-0.5, 0.5], rotated by `angle` radians: (u along, v across)."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    x, y = c[None, :], c[:, None]
    cos, sin = float(np.cos(angle)), float(np.sin(angle))  # Python floats keep the grid float32
    return x * cos + y * sin, y * cos - x * sin


def _blend(t: np.ndarray, c0: np.ndarray, c1: np.ndarray) -> np.ndarray:
    c0, c1 = np.float32(c0), np.float32(c1)
    return c0 + t[..., None] * (c1 - c0)


def _gradient(rng: np.random.Generator, size: int) -> np.ndarray:
    c0 = rng.uniform(0, 255, 3)
    c1 = distinct_colour(rng, c0, 100.0)
    theta = rng.uniform(0, 2 * np.pi)
    u, _ = _unit_grid(size, theta)
    return _blend(u / float(abs(np.cos(theta)) + abs(np.sin(theta))) + 0.5, c0, c1)


def _blobs(rng: np.random.Generator, size: int) -> np.ndarray:
    cells = int(rng.integers(2, 7))
    noise = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(noise).resize((size, size), Image.BICUBIC), dtype=np.float32)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes or a checkerboard at random frequency/orientation, from soft sinusoid to near-square wave."""
    c0 = rng.uniform(0, 255, 3)
    c1 = distinct_colour(rng, c0, 60.0)
    freq, sharpness = rng.uniform(2, 10), rng.uniform(1, 6)
    phase = rng.uniform(0, 2 * np.pi, 2).tolist()
    u, v = _unit_grid(size, rng.uniform(0, np.pi))
    wave = np.sin(2 * np.pi * freq * u + phase[0])
    if rng.random() < 0.5:
        wave = wave * np.sin(2 * np.pi * freq * v + phase[1])
    return _blend(0.5 + 0.5 * np.tanh(sharpness * wave) / float(np.tanh(sharpness)), c0, c1)


_BACKGROUNDS = (_gradient, _blobs, _texture)


def background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured float32 RGB background (size x size x 3): one kind, half the time blended with another."""
    first, second = rng.permutation(len(_BACKGROUNDS))[:2]
    image = _BACKGROUNDS[first](rng, size)
    if rng.random() < 0.5:
        image += rng.uniform(0.2, 0.5) * (_BACKGROUNDS[second](rng, size) - image)
    return image


@dataclass(frozen=True)
class Scene:
    """A rendered image and its objects in drawing order, with masks of their visible pixels."""

    image: np.ndarray  # uint8 H x W x 3
    labels: list[int]
    masks: list[np.ndarray]  # bool H x W, visible part only


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    area = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod()
    return float(inter / (area - inter))


def _place(rng: np.random.Generator, labels: Sequence[int], image_size: int, sizes: tuple[float, float],
           max_iou: float, attempts: int) -> list[tuple[int, np.ndarray]]:
    """Random size/rotation/position per label, fully inside the image, pairwise box IoU <= max_iou."""
    placed: list[tuple[int, np.ndarray]] = []
    boxes: list[np.ndarray] = []
    for label in labels:
        for _ in range(attempts):
            angle = 0.0 if label == 0 else rng.uniform(0, 360)
            points = outline(label, rng.uniform(*sizes), angle)
            low, high = points.min(axis=0), points.max(axis=0)
            points = points + rng.uniform(-low, image_size - high)
            box = np.concatenate([points.min(axis=0), points.max(axis=0)])
            if all(_iou(box, other) <= max_iou for other in boxes):
                placed.append((int(label), points))
                boxes.append(box)
                break
    return placed


def render_scene(rng: np.random.Generator, image_size: int, labels: Sequence[int], sizes: tuple[float, float],
                 max_iou: float = 0.2, min_visible: float = 0.5, attempts: int = 50) -> Scene:
    """Draw `labels` in order on a textured background; later shapes occlude earlier ones.

    A shape left less than `min_visible` visible is not drawn at all, so every drawn shape is annotated.
    """
    canvas = background(rng, image_size)
    placed = _place(rng, labels, image_size, sizes, max_iou, attempts)
    alphas = [coverage(points, image_size) for _, points in placed]
    full = [alpha >= 0.5 for alpha in alphas]
    kept, visible = [], []
    occluder = np.zeros((image_size, image_size), dtype=bool)
    for k in reversed(range(len(placed))):  # top-down: an object only depends on those drawn above it
        mask = full[k] & ~occluder
        if mask.sum() >= min_visible * full[k].sum():
            kept.append(k)
            visible.append(mask)
            occluder |= full[k]
    kept.reverse()
    visible.reverse()
    for k in kept:
        colour = shape_colour(rng, canvas[full[k]])
        canvas += alphas[k][..., None] * (colour - canvas)
    canvas += rng.uniform(*NOISE_SIGMA) * rng.standard_normal(canvas.shape, dtype=np.float32)
    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    return Scene(image, [placed[k][0] for k in kept], visible)
