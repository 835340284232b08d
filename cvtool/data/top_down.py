"""Top-down pose data: person crops with Gaussian target heatmaps, and heatmaps decoded back to image pixels.

Coordinates are continuous pixels throughout (pixel i covers [i, i + 1)): a crop of width W is mirrored by
x' = W - x, and heatmap pixel j covers crop pixels [j * stride, (j + 1) * stride), so its centre is
(j + 0.5) * stride. Nothing is shifted by half a pixel anywhere (the usual source of a systematic joint offset).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from cvtool.errors import CvtoolError

from .coco_json import _is_number, check_result_head, read_result_list

PERSON_BOXES_FIX = "a person boxes file is a COCO detection results JSON: [{image_id, category_id, score, bbox: " \
                   "[x, y, width, height]}, ...]"
RESCORE_THRESHOLD = 0.2  # joints whose heatmap peak is above this count in the instance score (HRNet's rescoring)


# --- geometry -------------------------------------------------------------------------------------------------
def box_centre_size(box, aspect: float, padding: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) and size (w, h) of the region cropped around an XYXY box: the box widened or heightened to
    the aspect ratio w / h = `aspect` (the input's W / H), then enlarged by `padding`."""
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = max(x1 - x0, 1.0), max(y1 - y0, 1.0)
    if w > aspect * h:
        h = w / aspect
    else:
        w = h * aspect
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), np.array([w, h]) * padding


def crop_affine(centre, size, output_size: tuple[int, int], rotation: float = 0.0, flip: bool = False) -> np.ndarray:
    """The 2x3 affine from image to crop pixels: the region of `size` (w, h) around `centre` rotated by `rotation`
    degrees (counter-clockwise on screen) onto an (H, W) crop, then mirrored (x' = W - x) when `flip`."""
    height, width = output_size
    scale = width / float(size[0])
    cos, sin = math.cos(math.radians(rotation)) * scale, math.sin(math.radians(rotation)) * scale
    linear = np.array([[cos, sin], [-sin, cos]])
    affine = np.concatenate([linear, (np.array([width / 2, height / 2]) - linear @ np.asarray(centre))[:, None]], 1)
    if flip:
        affine = np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0]]) @ np.vstack([affine, [0.0, 0.0, 1.0]])
    return affine


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine."""
    inverse = np.linalg.inv(affine[:, :2])
    return np.concatenate([inverse, -inverse @ affine[:, 2:]], 1)


def apply_affine(affine, points):
    """(..., 2) points mapped by a 2x3 affine (numpy arrays or torch tensors)."""
    return points @ affine[:, :2].T + affine[:, 2]


def warp_crop(image: torch.Tensor, inverse: np.ndarray, output_size: tuple[int, int]) -> torch.Tensor:
    """The uint8 (C, H, W) crop whose pixel centres map to the image by `inverse` (crop -> image), sampled
    bilinearly; outside the image is black. Only the image region under the crop is converted to float."""
    height, width = output_size
    corners = apply_affine(inverse, np.array([[0, 0], [width, 0], [0, height], [width, height]], dtype=np.float64))
    x0, y0 = np.maximum(np.floor(corners.min(0)).astype(int) - 1, 0)
    x1, y1 = np.minimum(np.ceil(corners.max(0)).astype(int) + 1, image.shape[-2:][::-1])
    if x1 <= x0 or y1 <= y0:
        return torch.zeros((image.shape[0], height, width), dtype=torch.uint8)
    # grid_sample (align_corners=False) reads -1 and 1 as the region's outer pixel edges: continuous pixels again
    to_grid = np.array([[2 / (x1 - x0), 0, -2 * x0 / (x1 - x0) - 1], [0, 2 / (y1 - y0), -2 * y0 / (y1 - y0) - 1]])
    grid = _pixel_centres(height, width) @ torch.as_tensor(to_grid @ np.vstack([inverse, [0, 0, 1]]),
                                                           dtype=torch.float32).T
    crop = F.grid_sample(image[:, y0:y1, x0:x1].float()[None], grid[None], mode="bilinear", padding_mode="zeros",
                         align_corners=False)
    return crop[0].add_(0.5).to(torch.uint8)  # rounds: bilinear samples of uint8 lie in [0, 255]


@functools.lru_cache(maxsize=8)
def _pixel_centres(height: int, width: int) -> torch.Tensor:
    """(H, W, 3) homogeneous pixel centres (x + 0.5, y + 0.5, 1) of an H x W crop."""
    ys, xs = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    return torch.stack([xs, ys, torch.ones_like(xs)], -1)


# --- targets --------------------------------------------------------------------------------------------------
def gaussian_heatmaps(points: np.ndarray, weights: np.ndarray, heatmap_size: tuple[int, int], stride: int,
                      sigma: float) -> torch.Tensor:
    """(K, h, w) float32 Gaussians of std `sigma` heatmap pixels, peak 1 at each joint's sub-pixel position
    (`points` (K, 2) in crop pixels), zero where the weight is 0."""
    h, w = heatmap_size
    centres = np.asarray(points, dtype=np.float64) / stride  # continuous heatmap coordinates
    gx = np.exp(-((np.arange(w) + 0.5)[None] - centres[:, :1]) ** 2 / (2 * sigma ** 2))
    gy = np.exp(-((np.arange(h) + 0.5)[None] - centres[:, 1:]) ** 2 / (2 * sigma ** 2))
    gy *= np.asarray(weights, dtype=np.float64)[:, None]
    return torch.from_numpy((gy[:, :, None] * gx[:, None, :]).astype(np.float32))

def joint_targets(keypoints: np.ndarray, affine: np.ndarray, output_size: tuple[int, int], stride: int,
                  sigma: float, flip_perm: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (K, h, w) and weights (K,) of (K, 3) [x, y, v] image keypoints seen through `affine`: weight 0 for
    v = 0 and for joints that land outside the heatmap; `flip_perm` (for a mirrored crop) moves joint k, with its
    weight, to channel flip_perm[k]."""
    h, w = output_size[0] // stride, output_size[1] // stride
    points = apply_affine(affine, keypoints[:, :2].astype(np.float64))
    inside = (points[:, 0] >= 0) & (points[:, 0] < w * stride) & (points[:, 1] >= 0) & (points[:, 1] < h * stride)
    weights = ((keypoints[:, 2] > 0) & inside).astype(np.float32)
    if flip_perm is not None:
        points[flip_perm], weights[flip_perm] = points.copy(), weights.copy()
    return gaussian_heatmaps(points, weights, (h, w), stride, sigma), torch.as_tensor(weights)


# --- dataset --------------------------------------------------------------------------------------------------
@dataclass
class PersonInstance:
    """One person box to crop: its image's index in the KeypointSet, XYXY box, score, 0-based label and (for
    annotated people) its (K, 3) keypoints."""

    index: int
    box: np.ndarray
    score: float
    label: int
    keypoints: np.ndarray | None = None


class TopDownSet(Dataset):
    """Person crops of a KeypointSet with their target heatmaps: every annotated person (not crowd, at least one
    labelled joint), or `person_boxes` [(image index, XYXY box, score, label), ...] from a detector. Training
    augments each crop with a random scale, rotation and left/right flip, all in one bilinear warp."""

    def __init__(self, source, *, input_size: tuple[int, int], stride: int, sigma: float, padding: float,
                 train: bool, flip_perm: list[int], scale_jitter: float, rotation: float, rotation_prob: float,
                 person_boxes: list | None = None):
        height, width = input_size
        if height % stride or width % stride:
            raise CvtoolError(f"input size {height}x{width} is not a multiple of the heatmap stride {stride}",
                              where="task.input_size", fix=f"use a height and width divisible by {stride}")
        if flip_perm is not None and len(flip_perm) != len(source.keypoint_names):
            raise CvtoolError(f"the flip map has {len(flip_perm)} entries for {len(source.keypoint_names)} keypoints",
                              where="dataset.flip_map", fix="give one entry per keypoint name")
        self.images, self.input_size, self.stride, self.sigma, self.padding = source, (height, width), stride, \
            sigma, padding
        self.train, self.flip_perm, self.scale_jitter = train, flip_perm, scale_jitter
        self.rotation, self.rotation_prob = rotation, rotation_prob
        self.instances = annotated_people(source) if person_boxes is None else [
            PersonInstance(int(i), np.asarray(box, dtype=np.float64), float(score), int(label))
            for i, box, score, label in person_boxes]
        self.classes, self.keypoint_names = source.classes, source.keypoint_names
        self.source = f"person crops of {source.source}"
        self.files = [str(source.items[p.index].file) for p in self.instances]
        self.image_transform: Callable | None = None  # photometric, on the uint8 crop

    @property
    def in_memory_data(self) -> bool:
        return getattr(self.images, "in_memory_data", False)

    def __len__(self) -> int:
        return len(self.instances)

    def subset(self, indices: list[int]) -> TopDownSet:
        """The images of these crops with every person in them (so a subset is evaluated on whole images)."""
        keep = sorted({self.instances[i].index for i in indices})
        part = TopDownSet.__new__(TopDownSet)
        part.__dict__.update(self.__dict__)
        part.images = self.images.subset(keep)
        new_index = {old: new for new, old in enumerate(keep)}
        part.instances = [PersonInstance(new_index[p.index], p.box, p.score, p.label, p.keypoints)
                          for p in self.instances if p.index in new_index]
        part.files = [str(part.images.items[p.index].file) for p in part.instances]
        part.source = f"{self.source}, subset of {len(keep)} images"
        return part

    def _augmentation(self) -> tuple[float, float, bool]:
        """(scale factor, rotation in degrees, flip) drawn from torch's generator (seeded per DataLoader worker)."""
        if not self.train:
            return 1.0, 0.0, False
        u = torch.rand(4).tolist()
        scale = 1 + self.scale_jitter * (2 * u[0] - 1)
        angle = self.rotation * (2 * u[1] - 1) if u[2] < self.rotation_prob else 0.0
        return scale, angle, self.flip_perm is not None and u[3] < 0.5

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        person = self.instances[index]
        height, width = self.input_size
        centre, size = box_centre_size(person.box, width / height, self.padding)
        scale, angle, flip = self._augmentation()
        affine = crop_affine(centre, size * scale, self.input_size, angle, flip)
        inverse = invert_affine(affine)
        crop = warp_crop(self.images.image(person.index), inverse, self.input_size)
        if self.image_transform is not None:
            crop = self.image_transform(crop)
        k = len(self.keypoint_names)
        keypoints = person.keypoints if person.keypoints is not None else np.zeros((k, 3))
        heatmaps, weights = joint_targets(keypoints, affine, self.input_size, self.stride, self.sigma,
                                          self.flip_perm if flip else None)
        meta = {"image_id": self.images.items[person.index].image_id, "label": person.label, "score": person.score,
                "inverse": inverse, "index": person.index, "box": person.box}
        return crop, heatmaps, weights, meta

    @staticmethod
    def collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[dict]]:
        crops, heatmaps, weights, metas = zip(*batch)
        return torch.stack(crops), torch.stack(heatmaps), torch.stack(weights), list(metas)


def annotated_people(source) -> list[PersonInstance]:
    """Every non-crowd person with at least one labelled joint, box score 1."""
    people = []
    for index, item in enumerate(source.items):
        for n in range(len(item.boxes)):
            if not item.iscrowd[n] and (item.keypoints[n, :, 2] > 0).any():
                people.append(PersonInstance(index, np.asarray(item.boxes[n], dtype=np.float64), 1.0,
                                             int(item.labels[n]), np.asarray(item.keypoints[n], dtype=np.float64)))
    return people


# --- decoding -------------------------------------------------------------------------------------------------
def flip_back(heatmaps: torch.Tensor, flip_perm: list[int]) -> torch.Tensor:
    """Heatmaps of a mirrored crop as heatmaps of the crop itself: x mirrored, channel k read from flip_perm[k]."""
    return heatmaps[:, flip_perm].flip(-1)


def _peaks(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maximum value, integer x and y of each (h, w) map of (N, h, w)."""
    values, flat = heatmaps.flatten(1).max(1)
    return values, flat % heatmaps.shape[-1], flat // heatmaps.shape[-1]


def quarter_peaks(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) peak positions in heatmap pixel indices (pixel j centred at j), the classic way: the argmax moved a
    quarter pixel towards the higher neighbour in x and in y; and the (N,) maximum values."""
    values, x, y = _peaks(heatmaps)
    padded = F.pad(heatmaps[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    n = torch.arange(len(heatmaps))
    dx = padded[n, y + 1, x + 2] - padded[n, y + 1, x]
    dy = padded[n, y + 2, x + 1] - padded[n, y, x + 1]
    return torch.stack([x + 0.25 * dx.sign(), y + 0.25 * dy.sign()], 1).float(), values


def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, h, w) maps smoothed by a Gaussian of std `sigma` (radius 3 sigma, reflected edges) as B_h @ map @ B_w^T,
    two small matrix products (much faster than a 2-D convolution of one-channel maps)."""
    return _blur_matrix(maps.shape[-2], sigma).to(maps) @ maps @ _blur_matrix(maps.shape[-1], sigma).to(maps).T


@functools.lru_cache(maxsize=8)
def _blur_matrix(n: int, sigma: float) -> torch.Tensor:
    """(n, n) 1-D Gaussian blur of a length-n signal with reflected edges (..., 2, 1, | 0, 1, 2, ...)."""
    radius = min(math.ceil(3 * sigma), n - 1)
    offsets = np.arange(-radius, radius + 1)
    taps = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    matrix = np.zeros((n, n))
    for i in range(n):
        j = np.abs(i + offsets)
        j = np.where(j > n - 1, 2 * (n - 1) - j, j)
        np.add.at(matrix[i], j, taps / taps.sum())
    return torch.as_tensor(matrix, dtype=torch.float32)


def _extrapolated(maps: torch.Tensor, dim: int) -> torch.Tensor:
    """`maps` grown by one pixel at both ends of `dim`, quadratically extrapolated (exact for a log Gaussian, so a
    joint on the heatmap's border is refined as well as one inside)."""
    if maps.shape[dim] < 3:
        return torch.cat([maps.narrow(dim, 0, 1), maps, maps.narrow(dim, -1, 1)], dim)
    first, last = maps.narrow(dim, 0, 3), maps.narrow(dim, -3, 3)
    before = 3 * first.narrow(dim, 0, 1) - 3 * first.narrow(dim, 1, 1) + first.narrow(dim, 2, 1)
    after = 3 * last.narrow(dim, 2, 1) - 3 * last.narrow(dim, 1, 1) + last.narrow(dim, 0, 1)
    return torch.cat([before, maps, after], dim)


def dark_peaks(heatmaps: torch.Tensor, sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2) peak positions in heatmap pixel indices and (N,) maximum values, refined as DARK does (Zhang et al.
    2020): one Newton step on the log heatmap from its argmax, exact for a Gaussian. `sigma` first smooths the maps
    with a Gaussian of that std (DARK's modulation, for noisy network outputs)."""
    values, x, y = _peaks(heatmaps)
    if sigma:
        smoothed = _blur(heatmaps, sigma)
        heatmaps = smoothed * (values / smoothed.flatten(1).amax(1).clamp_min(1e-12))[:, None, None]
    log = _extrapolated(_extrapolated(heatmaps.clamp_min(1e-10).log(), -1), -2)
    n, x1, y1 = torch.arange(len(heatmaps)), x + 1, y + 1

    def at(dx: int, dy: int) -> torch.Tensor:
        return log[n, y1 + dy, x1 + dx]

    gx, gy = (at(1, 0) - at(-1, 0)) / 2, (at(0, 1) - at(0, -1)) / 2
    hxx, hyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0), at(0, 1) - 2 * at(0, 0) + at(0, -1)
    hxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4
    det = hxx * hyy - hxy ** 2
    peak = (det > 0) & (hxx < 0)  # a maximum: the step is taken only where the Hessian is negative definite
    safe = torch.where(peak, det, torch.ones_like(det))
    ox = torch.where(peak, -(hyy * gx - hxy * gy) / safe, 0.0).clamp(-1, 1)
    oy = torch.where(peak, -(hxx * gy - hxy * gx) / safe, 0.0).clamp(-1, 1)
    return torch.stack([x + ox, y + oy], 1).float(), values


def decode(heatmaps: torch.Tensor, metas: list[dict], flip_heatmaps: torch.Tensor | None = None,
           flip_perm: list[int] | None = None, *, stride: int, sigma: float | None = None) -> list[dict]:
    """Per crop {"keypoints": (1, K, 3) [x, y, peak value] in original image pixels, "scores": (1,) box score x
    mean peak of the joints above RESCORE_THRESHOLD (0 if none), "labels": (1,)}. `flip_heatmaps` (of the mirrored
    crops) are flipped back and averaged in; `sigma` smooths before the sub-pixel step (see `dark_peaks`)."""
    heatmaps = heatmaps.detach().float().cpu()
    if flip_heatmaps is not None:
        heatmaps = (heatmaps + flip_back(flip_heatmaps.detach().float().cpu(), flip_perm)) / 2
    b, k, h, w = heatmaps.shape
    positions, values = dark_peaks(heatmaps.reshape(b * k, h, w), sigma)
    crop_points = (positions.reshape(b, k, 2).double() + 0.5) * stride
    values = values.reshape(b, k)
    outputs = []
    for points, peak, meta in zip(crop_points, values, metas):
        image_points = apply_affine(torch.as_tensor(meta["inverse"], dtype=torch.float64), points).float()
        confident = peak[peak > RESCORE_THRESHOLD]
        score = float(meta["score"]) * (float(confident.mean()) if len(confident) else 0.0)
        outputs.append({"keypoints": torch.cat([image_points, peak[:, None]], 1)[None],
                        "scores": torch.tensor([score]), "labels": torch.tensor([int(meta["label"])])})
    return outputs


# --- detector boxes -------------------------------------------------------------------------------------------
def read_person_boxes(path: str | Path, coco: dict, min_score: float) -> list[tuple]:
    """[(image_id, XYXY box, score, category_id), ...] of a COCO detection results file's boxes scoring at least
    `min_score`, every entry checked against the ground truth `coco`."""
    path = Path(path)
    results = read_result_list(path, "person boxes file", PERSON_BOXES_FIX)
    images = {im["id"] for im in coco["images"]}
    categories = {c["id"] for c in coco["categories"]}
    boxes = []
    for i, r in enumerate(results):
        where = f"{path} [{i}]"
        check_result_head(r, where, images, categories, PERSON_BOXES_FIX)
        box = r.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(map(_is_number, box)) and box[2] >= 0 <= box[3]):
            raise CvtoolError(f"bbox {box!r} is not [x, y, width >= 0, height >= 0]", where=where,
                              fix=PERSON_BOXES_FIX)
        if r["score"] >= min_score:
            x, y, bw, bh = (float(v) for v in box)
            boxes.append((r["image_id"], np.array([x, y, x + bw, y + bh]), float(r["score"]), r["category_id"]))
    return boxes


def indexed_person_boxes(boxes: list[tuple], source) -> list[tuple]:
    """`read_person_boxes` entries as TopDownSet's person_boxes: (image index in `source`, box, score, 0-based
    label); boxes of images not in `source` (e.g. outside a data.limit subset) are left out."""
    index = {item.image_id: i for i, item in enumerate(source.items)}
    label = {c["id"]: n for n, c in enumerate(sorted(source.coco["categories"], key=lambda c: c["id"]))}
    return [(index[image_id], box, score, label[category]) for image_id, box, score, category in boxes
            if image_id in index]
