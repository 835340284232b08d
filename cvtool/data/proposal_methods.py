"""Region proposal generators: selective search, Edge Boxes, and the fixed k-means set of "R-CNN minus R".

All boxes are float32 (n, 4) XYXY in continuous 0-based pixels (pixel i spans [i, i + 1)), ranked best first.

Selective search follows Uijlings et al. (IJCV 2013): Felzenszwalb-Huttenlocher regions (sigma 0.8, k = the
strategy's k, minimum region size k as in the authors' and OpenCV's code), hierarchical grouping by the sum of the
chosen similarities (colour: 25-bin histograms per channel; texture: Gaussian-derivative (sigma 1) responses in 8
orientations x 10 bins per channel; size; fill), merged histograms as size-weighted averages, and the paper's
pseudo-random ranking (hierarchy position times a uniform random number, seeded).

Edge Boxes follows Zitnick & Dollar (ECCV 2014), simplified to stay compact and vectorised:
- edges are the colour Sobel gradient of the Gaussian-smoothed image with non-maximum suppression (not structured
  edge forests), kept where the magnitude exceeds 0.1 of the image's maximum;
- an edge group is an 8-connected set of edge pixels in the same orientation bin of width pi/4 (the paper walks
  greedily until the accumulated orientation change exceeds pi/2);
- a group straddles a box when its bounding box crosses the box's, and the weight of a group inside is
  1 - the strongest affinity path from a straddling group, followed over at most two hops (the paper: any length);
- candidate boxes come from a sliding-window grid (translation, scale and aspect-ratio steps giving IoU alpha
  between neighbours); all of them are ranked by a cheap integral-image score (edge mass inside minus the mass of the
  inner half box and of the box's border ring), the best are scored exactly, and there is no local refinement.
"""

from __future__ import annotations

import functools
import heapq
import multiprocessing
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import ndimage
from skimage.color import rgb2hsv, rgb2lab
from skimage.segmentation import felzenszwalb

from cvtool.data.shapes import progress_bar
from cvtool.errors import CvtoolError

METHODS = ("selective_search", "edge")
# mode -> strategies (colour space, k, similarities): "fast" is the paper's fast mode, "single" one strategy
SS_MODES = {
    "fast": tuple((space, k, sims) for space in ("hsv", "lab") for k in (50, 100) for sims in ("CTSF", "TSF")),
    "single": (("hsv", 100, "CTSF"),),
}
SS_SIGMA = 0.8
COLOUR_BINS = 25
TEXTURE_BINS = 10
TEXTURE_ANGLES = np.deg2rad([0, 45, 90, 135])  # with both signs of the derivative: 8 orientations
BoxesScores = tuple[np.ndarray, np.ndarray | None]


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 2:
        raise ValueError(f"expected an HxWx3 uint8 RGB image, got {image.dtype} {image.shape}")
    return image


# ----------------------------------------------------------------------------------------------- selective search
def selective_search(image: np.ndarray, *, mode: str = "fast", max_proposals: int = 2000, min_size: int = 4,
                     seed: int = 0) -> np.ndarray:
    """Selective search boxes of an HxWx3 uint8 RGB image: (n, 4) float32, ranked, without duplicates and without
    boxes narrower or lower than `min_size` px (but the whole image); deterministic for a `seed`."""
    if mode not in SS_MODES:
        raise CvtoolError(f"unknown selective search mode {mode!r}", fix=f"use one of {', '.join(SS_MODES)}")
    rgb = _rgb(image)
    rng = np.random.default_rng(seed)
    features: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # per colour space: image, bins
    regions: dict[tuple[str, int], tuple[dict[str, np.ndarray], int]] = {}  # per segmentation
    boxes, ranks = [], []
    for space, k, sims in SS_MODES[mode]:
        if space not in features:
            channels = _colour_space(rgb, space)
            features[space] = channels, _colour_bins(channels), _texture_bins(channels)
        if (space, k) not in regions:
            channels, colour, texture = features[space]
            labels = felzenszwalb(channels, scale=k, sigma=SS_SIGMA, min_size=k, channel_axis=-1)
            regions[space, k] = _initial_regions(labels, colour, texture), labels.size
        hierarchy = _group(*regions[space, k], sims)
        boxes.append(hierarchy)
        # the paper's rank: position in the hierarchy (1 = the whole image) times a random number
        ranks.append(np.arange(len(hierarchy), 0, -1) * rng.random(len(hierarchy)))
    ranked = np.concatenate(boxes)[np.argsort(np.concatenate(ranks), kind="stable")].astype(np.int64)
    side = max(rgb.shape) + 1  # boxes have integer corners: one integer key per box finds the duplicates
    _, first = np.unique(((ranked[:, 0] * side + ranked[:, 1]) * side + ranked[:, 2]) * side + ranked[:, 3],
                         return_index=True)
    ranked = ranked[np.sort(first)]
    sides = ranked[:, 2:] - ranked[:, :2]
    smallest = min(min_size, *rgb.shape[:2])  # the whole image always stays
    return ranked[(sides >= smallest).all(axis=1)][:max_proposals].astype(np.float32)


def _colour_space(rgb: np.ndarray, space: str) -> np.ndarray:
    """The image in `space` ("hsv" or "lab"), every channel scaled to [0, 1]."""
    if space == "hsv":
        return rgb2hsv(rgb)
    lab = rgb2lab(rgb)
    return np.clip((lab + [0.0, 128.0, 128.0]) / [100.0, 255.0, 255.0], 0.0, 1.0)


def _bin_index(values: np.ndarray, bins: int) -> np.ndarray:
    """(H*W, C) bin of each pixel's value in [0, 1] for each of the C features, offset by `bins` per feature."""
    flat = values.reshape(-1, values.shape[-1])
    return np.minimum((flat * bins).astype(np.int64), bins - 1) + bins * np.arange(flat.shape[1])


def _colour_bins(channels: np.ndarray) -> np.ndarray:
    return _bin_index(channels, COLOUR_BINS)


def _texture_bins(channels: np.ndarray) -> np.ndarray:
    """Bins of the Gaussian-derivative responses (sigma 1) in 8 orientations per channel, each orientation's
    response scaled by its maximum over the image (as OpenCV's implementation does)."""
    gx = ndimage.gaussian_filter(channels, 1.0, order=(0, 1), axes=(0, 1))
    gy = ndimage.gaussian_filter(channels, 1.0, order=(1, 0), axes=(0, 1))
    directional = np.concatenate([np.cos(a) * gx + np.sin(a) * gy for a in TEXTURE_ANGLES], axis=-1)
    responses = np.concatenate([np.maximum(directional, 0), np.maximum(-directional, 0)], axis=-1)
    peak = responses.reshape(-1, responses.shape[-1]).max(axis=0)
    return _bin_index(responses / np.where(peak > 0, peak, 1.0), TEXTURE_BINS)


def _histograms(labels: np.ndarray, n: int, bins: np.ndarray, width: int) -> np.ndarray:
    """(n, width) L1-normalised histogram per region of the per-pixel bin indices `bins` (H*W, C)."""
    counts = np.bincount((labels.reshape(-1, 1) * width + bins).ravel(), minlength=n * width)
    counts = counts.reshape(n, width).astype(np.float64)
    return counts / counts.sum(axis=1, keepdims=True)


def _initial_regions(labels: np.ndarray, colour: np.ndarray, texture: np.ndarray) -> dict[str, np.ndarray]:
    """Size, box (x1, y1, x2, y2 exclusive), colour "C" and texture "T" histograms of each region, and the pairs of
    4-adjacent regions (i < j)."""
    n = int(labels.max()) + 1
    boxes = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels + 1)])
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:].ravel()])
    codes = np.unique(np.minimum(a, b)[a != b] * n + np.maximum(a, b)[a != b])
    return {"size": np.bincount(labels.ravel(), minlength=n).astype(np.float64), "box": boxes.astype(np.float64),
            "C": _histograms(labels, n, colour, colour.shape[1] * COLOUR_BINS),
            "T": _histograms(labels, n, texture, texture.shape[1] * TEXTURE_BINS),
            "pairs": np.stack(np.divmod(codes, n), axis=1)}


class _Grouping:
    """The regions of one hierarchical grouping. Sizes and boxes are Python lists: per merge only a handful of
    regions is touched, where numpy's per-call overhead would dominate."""

    def __init__(self, regions: dict[str, np.ndarray], sims: str, area: int):
        n = len(regions["size"])
        self.sims, self.area = sims, float(area)
        self.size = regions["size"].tolist() + [0.0] * (n - 1)
        self.box = regions["box"].tolist() + [None] * (n - 1)
        # C+T: one intersection of the concatenated histograms (each is L1-normalised on its own)
        self.hist = np.concatenate([regions[key] for key in "CT" if key in sims] + [np.zeros((n, 0))], axis=1)
        self.hist = np.concatenate([self.hist, np.zeros((n - 1, self.hist.shape[1]))])

    def similarity(self, i: int, others: list[int]) -> list[float]:
        """Sum of the similarities named by the letters of `sims` (C colour, T texture, S size, F fill) of region i
        and each of `others`."""
        total = np.minimum(self.hist[i], self.hist[others]).sum(axis=1).tolist()
        size_i, (x1, y1, x2, y2) = self.size[i], self.box[i]
        for k, other in enumerate(others):
            size = size_i + self.size[other]
            if "S" in self.sims:
                total[k] += 1.0 - size / self.area
            if "F" in self.sims:
                u1, v1, u2, v2 = self.box[other]
                total[k] += 1.0 - ((max(x2, u2) - min(x1, u1)) * (max(y2, v2) - min(y1, v1)) - size) / self.area
        return total

    def merge(self, i: int, j: int, new: int) -> None:
        """Region `new` = i + j: histograms are the size-weighted averages, nothing is recomputed from pixels."""
        size_i, size_j = self.size[i], self.size[j]
        self.size[new] = size_i + size_j
        self.hist[new] = (size_i * self.hist[i] + size_j * self.hist[j]) / (size_i + size_j)
        (x1, y1, x2, y2), (u1, v1, u2, v2) = self.box[i], self.box[j]
        self.box[new] = [min(x1, u1), min(y1, v1), max(x2, u2), max(y2, v2)]


def _group(regions: dict[str, np.ndarray], area: int, sims: str) -> np.ndarray:
    """Hierarchical grouping: merge the most similar adjacent pair until one region is left; returns the boxes of
    all regions in creation order, (2n - 1, 4)."""
    n = len(regions["size"])
    grouping = _Grouping(regions, sims, area)
    neighbours: list[set[int]] = [set() for _ in range(2 * n - 1)]
    for i, j in regions["pairs"].tolist():
        neighbours[i].add(j)
        neighbours[j].add(i)
    heap = []
    for i in range(n):
        later = [j for j in neighbours[i] if j > i]
        heap += zip([-s for s in grouping.similarity(i, later)], [i] * len(later), later, strict=True) if later else []
    heapq.heapify(heap)
    alive = [True] * n + [False] * (n - 1)
    new = n
    while heap:  # a pair with a merged (dead) region is stale: regions are never modified, only replaced
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):
            continue
        grouping.merge(i, j, new)
        alive[i] = alive[j] = False
        alive[new] = True
        around = (neighbours[i] | neighbours[j]) - {i, j}
        for u in around:
            neighbours[u] -= {i, j}
            neighbours[u].add(new)
        neighbours[new] = around
        if around:
            others = list(around)
            for s, u in zip(grouping.similarity(new, others), others, strict=True):
                heapq.heappush(heap, (-s, u, new))
        new += 1
    return np.array(grouping.box[:new], np.float64)


# ----------------------------------------------------------------------------------------------------- edge boxes
def edge_boxes(image: np.ndarray, *, max_proposals: int = 2000, alpha: float = 0.65, beta: float = 0.75,
               kappa: float = 1.5, gamma: float = 2.0, min_box_area: float = 64.0, max_aspect: float = 3.0,
               candidates: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Edge Boxes of an HxWx3 uint8 RGB image: (boxes (n, 4) float32, scores (n,) float32), ranked by score.

    alpha: IoU between neighbouring windows of the search grid; beta: NMS IoU; kappa: perimeter exponent of the
    score; gamma: affinity exponent; `candidates`: how many grid boxes (best by the cheap score) are scored exactly,
    which bounds the number of boxes returned."""
    rgb = _rgb(image)
    magnitude, orientation = _edges(rgb)
    labels = _group_labels(magnitude, orientation)
    magnitude = np.where(labels > 0, magnitude, 0.0)
    groups = _edge_groups(labels, magnitude, orientation, gamma)
    grid = _window_grid(rgb.shape[1], rgb.shape[0], alpha, min_box_area, max_aspect)
    integral = _integral(magnitude)
    inner = _box_sum(integral, _inner(grid))
    total = _box_sum(integral, grid)
    ring = total - _box_sum(integral, grid + [1, 1, -1, -1])  # edges on the border: groups crossing it
    coarse = (total - inner - ring) / _perimeter(grid) ** kappa
    best = np.argsort(-coarse, kind="stable")[:candidates]
    grid, inner = grid[best], inner[best]
    scores = (_group_score(groups, grid) - inner) / _perimeter(grid) ** kappa
    order = np.argsort(-scores, kind="stable")
    keep = order[_nms(grid[order], beta, max_proposals)]
    return grid[keep].astype(np.float32), scores[keep].astype(np.float32)


def _edges(rgb: np.ndarray, threshold: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Thinned edge magnitude (scaled to max 1, zero below `threshold`) and edge orientation in [0, pi)."""
    smooth = ndimage.gaussian_filter(rgb.astype(np.float64) / 255.0, 1.0, axes=(0, 1))
    gx, gy = ndimage.sobel(smooth, axis=1), ndimage.sobel(smooth, axis=0)
    strongest = np.argmax(gx**2 + gy**2, axis=-1)[..., None]  # per pixel, the channel with the largest gradient
    gx, gy = np.take_along_axis(gx, strongest, -1)[..., 0], np.take_along_axis(gy, strongest, -1)[..., 0]
    magnitude = np.hypot(gx, gy)
    # non-maximum suppression across the edge, along the gradient quantised to 0, 45, 90 or 135 degrees
    direction = np.rint(np.arctan2(gy, gx) / (np.pi / 4)).astype(np.int64) % 4
    padded = np.pad(magnitude, 1)
    height, width = magnitude.shape
    keep = np.zeros_like(magnitude, dtype=bool)
    for d, (dy, dx) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = padded[1 + dy:1 + dy + height, 1 + dx:1 + dx + width]
        behind = padded[1 - dy:1 - dy + height, 1 - dx:1 - dx + width]
        keep |= (direction == d) & (magnitude >= ahead) & (magnitude >= behind)
    peak = magnitude.max()
    magnitude = np.where(keep, magnitude / peak if peak > 0 else 0.0, 0.0)
    magnitude[magnitude < threshold] = 0.0
    return magnitude, np.mod(np.arctan2(gy, gx) + np.pi / 2, np.pi)


def _group_labels(magnitude: np.ndarray, orientation: np.ndarray, bins: int = 4, min_mass: float = 0.5) -> np.ndarray:
    """Edge groups as labels 1..n (0: no edge): 8-connected edge pixels of one orientation bin; groups of magnitude
    sum below `min_mass` are dropped (the paper merges them into a neighbour or drops them)."""
    binned = np.minimum((orientation / np.pi * bins).astype(np.int64), bins - 1)
    labels = np.zeros(magnitude.shape, np.int64)
    for b in range(bins):
        part, _ = ndimage.label((magnitude > 0) & (binned == b), structure=np.ones((3, 3)))
        labels[part > 0] = part[part > 0] + labels.max()
    keep = np.bincount(labels.ravel(), magnitude.ravel()) >= min_mass
    keep[0] = False
    return np.where(keep, np.cumsum(keep), 0)[labels]


def _edge_groups(labels: np.ndarray, magnitude: np.ndarray, orientation: np.ndarray,
                 gamma: float) -> dict[str, np.ndarray]:
    """Each edge group's magnitude sum "mass" and bounding box "box" (x1, y1, x2, y2 exclusive); the neighbouring
    "pairs" (both orders, sorted) with their "affinity" |cos(theta_i - theta_ij) cos(theta_j - theta_ij)|^gamma
    (theta: mean orientations, theta_ij: the angle between the groups' mean positions), and per group the (first
    pair, count) of its "neighbours"."""
    n = int(labels.max())
    on = labels.ravel() > 0
    index = labels.ravel()[on] - 1
    ys, xs = np.divmod(np.flatnonzero(on), labels.shape[1])
    weights = magnitude.ravel()[on]
    mass = np.bincount(index, weights, minlength=n)
    centre = np.stack([np.bincount(index, weights * xs, n), np.bincount(index, weights * ys, n)], 1) / mass[:, None]
    doubled = 2 * orientation.ravel()[on]  # the mean of axial angles: of their doubles, as vectors
    theta = np.arctan2(np.bincount(index, weights * np.sin(doubled), n),
                       np.bincount(index, weights * np.cos(doubled), n)) / 2
    boxes = np.array([(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)],
                     np.float64).reshape(-1, 4)
    pairs = _touching(labels)
    offset = centre[pairs[:, 1]] - centre[pairs[:, 0]]
    between = np.arctan2(offset[:, 1], offset[:, 0])
    affinity = np.abs(np.cos(theta[pairs[:, 0]] - between) * np.cos(theta[pairs[:, 1]] - between)) ** gamma
    neighbours = np.stack([np.searchsorted(pairs[:, 0], np.arange(n)), np.bincount(pairs[:, 0], minlength=n)], 1)
    return {"mass": mass, "box": boxes, "pairs": pairs, "affinity": affinity, "neighbours": neighbours}


def _touching(labels: np.ndarray, radius: int = 2) -> np.ndarray:
    """(P, 2) pairs (both orders) of different groups with pixels at most `radius` px apart (Chebyshev)."""
    padded = np.pad(labels, radius)
    height, width = labels.shape
    n = int(labels.max())
    found = [np.zeros(0, np.int64)]
    for dy in range(0, radius + 1):
        for dx in range(-radius, radius + 1):
            if dy == 0 and dx <= 0:
                continue
            other = padded[radius + dy:radius + dy + height, radius + dx:radius + dx + width]
            both = (labels > 0) & (other > 0) & (labels != other)
            found += [labels[both] * (n + 1) + other[both], other[both] * (n + 1) + labels[both]]
    return np.stack(np.divmod(np.unique(np.concatenate(found)), n + 1), axis=1) - 1


def _group_score(groups: dict[str, np.ndarray], boxes: np.ndarray) -> np.ndarray:
    """Sum over the groups wholly inside each box of mass x (1 - strongest affinity path from a group straddling the
    box's boundary, of one or two hops): the numerator of the paper's h_b."""
    gbox = groups["box"]
    overlaps = ((gbox[None, :, 0] < boxes[:, None, 2]) & (gbox[None, :, 2] > boxes[:, None, 0])
                & (gbox[None, :, 1] < boxes[:, None, 3]) & (gbox[None, :, 3] > boxes[:, None, 1]))
    inside = ((gbox[None, :, 0] >= boxes[:, None, 0]) & (gbox[None, :, 2] <= boxes[:, None, 2])
              & (gbox[None, :, 1] >= boxes[:, None, 1]) & (gbox[None, :, 3] <= boxes[:, None, 3]))
    one_hop = _propagate(groups, overlaps & ~inside, np.ones(0)) * inside
    link = np.maximum(one_hop, _propagate(groups, one_hop > 0, one_hop[one_hop > 0]) * inside)
    return (inside * (1.0 - link)) @ groups["mass"]


def _propagate(groups: dict[str, np.ndarray], source: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """(boxes, groups): for each group i, the max over its neighbours j with source[b, j] of strength (in the order
    of np.nonzero(source); empty for all ones) x affinity(i, j)."""
    box, group = np.nonzero(source)
    first, count = groups["neighbours"][group].T
    pair = np.repeat(first - np.cumsum(count) + count, count) + np.arange(count.sum())  # the pairs of each source
    value = groups["affinity"][pair] * (np.repeat(strength, count) if len(strength) else 1.0)
    out = np.zeros(source.shape)
    np.maximum.at(out, (np.repeat(box, count), groups["pairs"][pair, 1]), value)
    return out


def _window_grid(width: int, height: int, alpha: float, min_area: float, max_aspect: float) -> np.ndarray:
    """Sliding windows (n, 4): aspect ratios, scales and positions stepped so neighbours overlap with IoU alpha;
    the whole image is always one of them."""
    aspect_step = ((1 + alpha) / (2 * alpha)) ** 2
    scale_step = 1 / np.sqrt(alpha)
    shift = (1 - alpha) / (1 + alpha)
    aspects = aspect_step ** np.arange(-np.floor(np.log(max_aspect) / np.log(aspect_step)),
                                       np.floor(np.log(max_aspect) / np.log(aspect_step)) + 1)
    windows = [np.array([[0.0, 0.0, width, height]])]
    for aspect in aspects:
        box_w = np.sqrt(min_area * aspect)
        while box_w <= width and box_w / aspect <= height:
            box_h = box_w / aspect
            xs = np.arange(0, width - box_w + 1e-6, max(shift * box_w, 1.0))
            ys = np.arange(0, height - box_h + 1e-6, max(shift * box_h, 1.0))
            x, y = (a.ravel() for a in np.meshgrid(xs, ys))
            windows.append(np.stack([x, y, x + box_w, y + box_h], 1))
            box_w *= scale_step
    return np.rint(np.concatenate(windows))


def _integral(values: np.ndarray) -> np.ndarray:
    return np.pad(values.cumsum(0).cumsum(1), ((1, 0), (1, 0)))


def _box_sum(integral: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Sum of the values inside integer boxes (x1, y1, x2, y2 exclusive), from their integral image."""
    x1, y1, x2, y2 = np.clip(boxes, 0, None).astype(np.int64).T
    x2, y2 = np.minimum(x2, integral.shape[1] - 1), np.minimum(y2, integral.shape[0] - 1)
    return integral[y2, x2] - integral[y1, x2] - integral[y2, x1] + integral[y1, x1]


def _inner(boxes: np.ndarray) -> np.ndarray:
    """The centred boxes of half the width and height (the paper's b_in)."""
    quarter = (boxes[:, 2:] - boxes[:, :2]) / 4
    return np.rint(np.concatenate([boxes[:, :2] + quarter, boxes[:, 2:] - quarter], 1))


def _perimeter(boxes: np.ndarray) -> np.ndarray:
    return 2.0 * ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1]))


def _nms(boxes: np.ndarray, threshold: float, limit: int) -> np.ndarray:
    """Indices of the greedy NMS survivors (IoU <= threshold with every better one) of ranked `boxes`, at most
    `limit`."""
    pairs = _overlapping(boxes, threshold)
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    starts = np.searchsorted(pairs[:, 0], np.arange(len(boxes) + 1))
    suppressed = np.zeros(len(boxes), bool)
    keep: list[int] = []
    for index in range(len(boxes)):
        if not suppressed[index]:
            keep.append(index)
            suppressed[pairs[starts[index]:starts[index + 1], 1]] = True
    return np.array(keep[:limit], np.int64)


def _overlapping(boxes: np.ndarray, threshold: float) -> np.ndarray:
    """(P, 2) index pairs of boxes with IoU > threshold, found without the full IoU matrix: as the 2-D IoU is at
    most the 1-D IoU along x, a box b with b.x1 >= a.x1 can only pass if b.x1 - a.x1 <= (1 - t) / t * a.width."""
    order = np.argsort(boxes[:, 0], kind="stable")
    x1 = boxes[order, 0]
    reach = (1 - threshold) / threshold * (boxes[order, 2] - x1)
    count = np.searchsorted(x1, x1 + reach, side="right") - np.arange(len(x1)) - 1
    first = np.repeat(np.arange(len(x1)), count)
    second = first + 1 + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    a, b = boxes[order[first]], boxes[order[second]]
    wh = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    union = np.prod(a[:, 2:] - a[:, :2], axis=1) + np.prod(b[:, 2:] - b[:, :2], axis=1) - inter
    close = inter > threshold * union
    return np.stack([order[first[close]], order[second[close]]], axis=1)


# ------------------------------------------------------------------------------------------ fixed set ("minus R")
def kmeans_boxes(normalised: np.ndarray, k: int, *, seed: int = 0) -> np.ndarray:
    """Lenc & Vedaldi's image-independent proposals: the k-means (k-means++ init, Euclidean) centres of training
    boxes given as (M, 4) normalised (cx, cy, w, h); returns (k, 4) float32 centres, largest cluster first."""
    from sklearn.cluster import KMeans  # scikit-learn takes ~1 s to import; only this function needs it

    points = np.asarray(normalised, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 4:
        raise ValueError(f"expected (M, 4) normalised boxes, got shape {points.shape}")
    distinct = len(np.unique(points, axis=0))
    if k < 1 or distinct < k:
        raise CvtoolError(f"k-means proposals need at least k={k} distinct training boxes, the training split has "
                          f"{distinct}", fix="lower the number of proposals k or use a larger training split")
    kmeans = KMeans(n_clusters=k, init="k-means++", n_init=3, random_state=seed).fit(points)
    sizes = np.bincount(kmeans.labels_, minlength=k)
    return kmeans.cluster_centers_[np.argsort(-sizes, kind="stable")].astype(np.float32)


def fixed_proposals(centres: np.ndarray, width: int, height: int) -> np.ndarray:
    """The normalised (cx, cy, w, h) `centres` as (k, 4) float32 XYXY px boxes of a width x height image, clipped."""
    centres = np.asarray(centres, dtype=np.float64)
    scale = np.array([width, height], dtype=np.float64)
    centre, size = centres[:, :2] * scale, centres[:, 2:] * scale
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=1)
    return np.clip(boxes, 0, np.tile(scale, 2)).astype(np.float32)


# ----------------------------------------------------------------------------------------------- image files
def propose_images(method: str, files: list[Path], *, jobs: int, **options) -> list[BoxesScores]:
    """(boxes, scores or None) of `method` ("selective_search" or "edge") for each image file, in file order,
    over `jobs` processes; `options` go to the method."""
    if method not in METHODS:
        raise CvtoolError(f"unknown proposal method {method!r}", fix=f"use one of {', '.join(METHODS)}")
    work = functools.partial(_propose_file, method, options)
    workers = max(1, min(jobs, len(files)))
    with ExitStack() as stack:
        mapper: Callable[..., object] = map
        if workers > 1 and sys.platform == "linux" and not multiprocessing.current_process().daemon:
            # fork (Linux only): the children only run numpy/scikit-image code; spawn would re-import __main__
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            stack.callback(pool.shutdown, cancel_futures=True)  # on an error, drop the images not started yet
            mapper = functools.partial(pool.map, chunksize=max(1, min(16, len(files) // (4 * workers))))
        found = []
        with progress_bar(f"{method} proposals", len(files)) as advance:
            for result in mapper(work, files):
                found.append(result)
                advance()
        return found


def _propose_file(method: str, options: dict, path: Path) -> BoxesScores:
    image = read_rgb(path)
    if method == "edge":
        return edge_boxes(image, **options)
    return selective_search(image, **options), None


def read_rgb(path: str | Path) -> np.ndarray:
    """HxWx3 uint8 RGB array of an image file (EXIF orientation applied); CvtoolError naming a corrupt file."""
    try:
        with Image.open(path) as pil:
            return np.asarray(ImageOps.exif_transpose(pil).convert("RGB")).copy()
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise CvtoolError(f"image file is corrupt or unreadable: {error}", where=str(path),
                          fix="replace or remove the file") from error
