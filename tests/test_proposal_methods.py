"""Proposal generators: selective search and Edge Boxes on hand-made images, the k-means "minus R" set and its pixel
boxes by hand, image files (order, parallel, corrupt files), and that none of it needs torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import without_torch
from PIL import Image

from cvtool.data.proposal_methods import edge_boxes, fixed_proposals, kmeans_boxes, propose_images, selective_search
from cvtool.errors import CvtoolError
from cvtool.metrics.proposals import box_iou


def two_rectangles() -> tuple[np.ndarray, np.ndarray]:
    """A grey 96x96 image with a red and a blue flat rectangle; their XYXY boxes."""
    image = np.full((96, 96, 3), 128, np.uint8)
    image[10:40, 8:30] = (220, 30, 30)  # rows 10..39, columns 8..29
    image[50:86, 45:91] = (30, 30, 200)
    return image, np.array([[8, 10, 30, 40], [45, 50, 91, 86]], np.float32)


def noisy_image(seed: int = 0, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("mode", ["fast", "single"])
def test_selective_search_ranks_flat_rectangles_high(mode):
    image, rectangles = two_rectangles()
    boxes = selective_search(image, mode=mode)
    assert boxes.dtype == np.float32 and boxes.shape[1] == 4
    assert len(np.unique(boxes, axis=0)) == len(boxes)  # duplicates removed
    assert (box_iou(rectangles, boxes[:10]).max(axis=1) > 0.9).all()
    assert [0, 0, 96, 96] in boxes.tolist()  # the last merge: the whole image


def test_selective_search_boxes_are_continuous_xyxy():
    assert selective_search(np.full((10, 12, 3), 77, np.uint8)).tolist() == [[0, 0, 12, 10]]
    image = np.zeros((48, 64, 3), np.uint8)
    image[5:41, 3:31] = 255  # pixel columns 3..30, rows 5..40
    assert [3, 5, 31, 41] in selective_search(image, mode="single").tolist()


def test_selective_search_drops_small_boxes_and_truncates():
    boxes = selective_search(noisy_image(), mode="single", min_size=10, max_proposals=5)
    assert len(boxes) == 5 and (boxes[:, 2:] - boxes[:, :2] >= 10).all()


def test_selective_search_is_deterministic_for_a_seed():
    image = noisy_image()
    first = selective_search(image, mode="single")
    np.testing.assert_array_equal(first, selective_search(image, mode="single"))
    other = selective_search(image, mode="single", seed=1)
    assert sorted(map(tuple, other.tolist())) == sorted(map(tuple, first.tolist()))  # the same boxes ...
    assert not np.array_equal(other, first)  # ... ranked by other random numbers


def test_selective_search_rejects_an_unknown_mode():
    with pytest.raises(CvtoolError, match="unknown selective search mode 'quality'"):
        selective_search(noisy_image(), mode="quality")


def test_edge_boxes_finds_a_high_contrast_rectangle():
    image = np.full((96, 128, 3), 40, np.uint8)
    image[20:60, 30:90] = 220
    boxes, scores = edge_boxes(image, max_proposals=300)
    assert boxes.shape == (len(scores), 4) and 0 < len(boxes) <= 300
    assert (np.diff(scores) <= 0).all()  # ranked
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 128).all() and (boxes[:, 3] <= 96).all()
    assert box_iou(np.array([[30, 20, 90, 60]]), boxes[:3]).max() > 0.7
    kept = box_iou(boxes, boxes)[np.triu_indices(len(boxes), 1)]
    assert kept.max() <= 0.75  # NMS at beta


def test_kmeans_boxes_finds_the_obvious_clusters():
    offsets = np.array([[0.01, 0, 0, 0], [-0.01, 0, 0, 0], [0, 0.01, 0, 0], [0, -0.01, 0, 0]])
    small = np.array([0.25, 0.25, 0.1, 0.1]) + offsets  # 4 boxes, mean (0.25, 0.25, 0.1, 0.1)
    large = np.array([0.75, 0.7, 0.3, 0.2]) + offsets[:2]  # 2 boxes, mean (0.75, 0.7, 0.3, 0.2)
    centres = kmeans_boxes(np.concatenate([large, small]), 2, seed=3)
    assert centres.dtype == np.float32
    np.testing.assert_allclose(centres, [[0.25, 0.25, 0.1, 0.1], [0.75, 0.7, 0.3, 0.2]], atol=1e-6)  # biggest first
    np.testing.assert_array_equal(centres, kmeans_boxes(np.concatenate([large, small]), 2, seed=3))


def test_kmeans_boxes_needs_k_distinct_boxes():
    with pytest.raises(CvtoolError, match="at least k=3 distinct training boxes, the training split has 2"):
        kmeans_boxes(np.array([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.4, 0.5, 0.2, 0.2]]), 3)


def test_fixed_proposals_are_pixel_boxes_clipped_to_the_image():
    centres = np.array([[0.5, 0.5, 0.2, 0.4], [0.1, 0.9, 0.4, 0.4]])
    # (cx, cy, w, h) in a 100 x 50 image: (50, 25, 20, 20) and (10, 45, 40, 20) px
    np.testing.assert_array_equal(fixed_proposals(centres, 100, 50), [[40, 15, 60, 35], [0, 35, 30, 50]])


def save(path: Path, image: np.ndarray) -> Path:
    Image.fromarray(image).save(path)
    return path


def test_propose_images_keeps_file_order_in_parallel(tmp_path):
    files = [save(tmp_path / f"{i}.png", noisy_image(i, 32)) for i in range(3)]
    serial = propose_images("selective_search", files, jobs=1, mode="single")
    parallel = propose_images("selective_search", files, jobs=2, mode="single")
    for (boxes, scores), file, (again, _) in zip(serial, files, parallel, strict=True):
        assert scores is None
        np.testing.assert_array_equal(boxes, selective_search(np.asarray(Image.open(file)), mode="single"))
        np.testing.assert_array_equal(again, boxes)
    (boxes, scores), = propose_images("edge", files[:1], jobs=1, max_proposals=7)
    assert len(boxes) == len(scores) == 7


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_corrupt_image_is_named(tmp_path, jobs):
    good = save(tmp_path / "good.png", noisy_image(0, 16))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(CvtoolError, match="broken.jpg"):
        propose_images("selective_search", [good, tmp_path / "broken.jpg"], jobs=jobs, mode="single")


def test_propose_images_rejects_an_unknown_method(tmp_path):
    with pytest.raises(CvtoolError, match="unknown proposal method 'kmeans'"):
        propose_images("kmeans", [], jobs=1)


def test_works_without_torch(tmp_path):
    script = """
import numpy as np
from cvtool.data.proposal_methods import edge_boxes, selective_search
image = np.zeros((32, 32, 3), np.uint8)
image[8:24, 8:24] = 255
assert [8, 8, 24, 24] in selective_search(image, mode="single").tolist()
assert len(edge_boxes(image)[0]) > 0
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=without_torch(tmp_path),
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
