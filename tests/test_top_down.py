"""Top-down pose data: crop geometry in continuous pixels, target heatmaps, decoding, person boxes, skeletons."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cvtool.data.top_down import (
    TopDownSet,
    apply_affine,
    box_centre_size,
    crop_affine,
    dark_peaks,
    decode,
    flip_back,
    gaussian_heatmaps,
    indexed_person_boxes,
    invert_affine,
    joint_targets,
    quarter_peaks,
    read_person_boxes,
    warp_crop,
)
from cvtool.errors import CvtoolError

NAMES = ["head", "left_wrist", "right_wrist", "left_ankle", "right_ankle"]
FLIP = [0, 2, 1, 4, 3]
SKELETON = [(0, 1), (0, 2), (1, 3), (2, 4), (3, 4)]
INPUT = (64, 48)
STRIDE = 4


def fake_set(keypoints: np.ndarray, box=(20.0, 10.0, 60.0, 90.0), image=None, crowd=False):
    """A minimal stand-in with the KeypointSet attributes TopDownSet uses: one 100x120 image with one person."""
    image = torch.zeros((3, 100, 120), dtype=torch.uint8) if image is None else image
    item = SimpleNamespace(image_id=7, file="fake.png", size=(120, 100), boxes=np.array([box], dtype=np.float64),
                           labels=np.array([0]), keypoints=np.asarray(keypoints, dtype=np.float64)[None],
                           iscrowd=np.array([crowd]), area=np.array([1.0]))
    return SimpleNamespace(items=[item], classes=["person"], keypoint_names=NAMES, flip=FLIP, image=[image].__getitem__,
                           source="fake", coco={"images": [{"id": 7}], "categories": [{"id": 1, "name": "person"}]})


def crops(source, train=False, **changes):
    kwargs = dict(input_size=INPUT, stride=STRIDE, sigma=2.0, padding=1.25, train=train, flip_perm=FLIP,
                  scale_jitter=0.0, rotation=0.0, rotation_prob=0.0)
    return TopDownSet(source, **{**kwargs, **changes})


POSE = np.array([[40, 20, 2], [25, 50, 2], [55, 50, 2], [30, 85, 1], [50, 85, 2]], dtype=np.float64)


def test_box_grows_to_the_input_aspect_and_padding():
    centre, size = box_centre_size([10, 20, 30, 100], aspect=0.75, padding=1.25)
    assert centre.tolist() == [20, 60] and size.tolist() == pytest.approx([60 * 1.25, 80 * 1.25])
    _, size = box_centre_size([0, 0, 90, 10], aspect=0.75, padding=1.0)
    assert size.tolist() == pytest.approx([90, 120])


@pytest.mark.parametrize("rotation,flip", [(0.0, False), (27.0, False), (-40.0, True), (0.0, True)])
def test_points_map_to_the_crop_and_back_exactly(rotation, flip):
    affine = crop_affine([41.3, 57.9], [33.0, 44.0], INPUT, rotation, flip)
    points = np.random.default_rng(0).uniform(0, 100, (20, 2))
    assert np.allclose(apply_affine(invert_affine(affine), apply_affine(affine, points)), points, atol=1e-9)
    centre = apply_affine(affine, np.array([[41.3, 57.9]]))
    assert centre[0] == pytest.approx([INPUT[1] / 2, INPUT[0] / 2])  # box centre -> crop centre, flipped or not


def test_flip_is_x_mirrored_in_continuous_pixels_and_twice_the_identity():
    plain, flipped = crop_affine([40, 50], [30, 40], INPUT), crop_affine([40, 50], [30, 40], INPUT, flip=True)
    points = np.random.default_rng(1).uniform(0, 100, (10, 2))
    a, b = apply_affine(plain, points), apply_affine(flipped, points)
    assert np.allclose(b[:, 0], INPUT[1] - a[:, 0]) and np.allclose(a[:, 1], b[:, 1])
    mirror = np.array([[-1.0, 0, INPUT[1]], [0, 1, 0]])
    assert np.allclose(apply_affine(mirror, apply_affine(mirror, points)), points)
    image = torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8)
    crop, crop_flipped = (warp_crop(image, invert_affine(m), INPUT) for m in (plain, flipped))
    assert (crop.flip(-1).int() - crop_flipped.int()).abs().max() <= 1  # the same samples, mirrored


def test_warped_pixel_lands_where_the_affine_puts_its_centre():
    image = torch.zeros((3, 100, 120), dtype=torch.uint8)
    image[:, 37, 52] = 255
    affine = crop_affine([50, 40], [12, 16], INPUT)  # 4x magnification, rotated below
    for rotation in (0.0, 33.0):
        affine = crop_affine([50, 40], [12, 16], INPUT, rotation)
        crop = warp_crop(image, invert_affine(affine), INPUT)[0].double()
        ys, xs = torch.meshgrid(torch.arange(INPUT[0]) + 0.5, torch.arange(INPUT[1]) + 0.5, indexing="ij")
        centroid = [(crop * xs).sum() / crop.sum(), (crop * ys).sum() / crop.sum()]
        expected = apply_affine(affine, np.array([[52.5, 37.5]]))[0]  # pixel (52, 37) covers [52, 53) x [37, 38)
        assert np.allclose([float(c) for c in centroid], expected, atol=0.05)


@pytest.mark.parametrize("point", [(30.0, 40.0), (30.37, 41.81), (29.5, 40.5), (33.9, 38.02), (0.2, 13.0)])
def test_encode_then_decode_recovers_the_joint_within_005_px(point):  # (0.2, 13): on the heatmap border
    box = [10.0, 12.0, 52.0, 80.0]
    centre, size = box_centre_size(box, INPUT[1] / INPUT[0], 1.25)
    keypoints = np.array([[*point, 2.0], [point[0] + 7.3, point[1] - 4.1, 2], [0, 0, 0], [20.2, 70.7, 1],
                          [41.0, 71.0, 2]])
    affine, flipped = crop_affine(centre, size, INPUT), crop_affine(centre, size, INPUT, flip=True)
    heatmaps, weights = joint_targets(keypoints, affine, INPUT, STRIDE, 2.0)
    flip_heatmaps, _ = joint_targets(keypoints, flipped, INPUT, STRIDE, 2.0, FLIP)
    meta = {"inverse": invert_affine(affine), "score": 0.9, "label": 0}
    for kwargs in ({}, {"flip_heatmaps": flip_heatmaps[None], "flip_perm": FLIP}):
        out = decode(heatmaps[None], [meta], stride=STRIDE, **kwargs)[0]
        labelled = weights > 0
        assert torch.allclose(out["keypoints"][0, labelled, :2].double(), torch.as_tensor(keypoints[labelled.numpy(),
                              :2]), atol=0.05)
    assert out["scores"].item() == pytest.approx(0.9 * out["keypoints"][0, labelled, 2].mean().item(), rel=1e-6)
    assert out["keypoints"][0, 2, 2] == 0 and out["labels"].tolist() == [0]


def test_dark_beats_the_quarter_offset_on_sub_pixel_gaussians():
    rng = np.random.default_rng(2)
    centres = rng.uniform(8, 14, (50, 2))  # continuous heatmap coordinates
    heatmaps = gaussian_heatmaps(centres * STRIDE, np.ones(50), (24, 24), STRIDE, 2.0)
    truth = torch.as_tensor(centres - 0.5)  # as pixel indices (pixel j centred at j)
    dark = (dark_peaks(heatmaps)[0] - truth).abs().max().item()
    smoothed = (dark_peaks(heatmaps, sigma=2.0)[0] - truth).abs().max().item()
    quarter = (quarter_peaks(heatmaps)[0] - truth).abs()
    assert dark < 1e-3 and smoothed < 0.01
    assert quarter.max() <= 0.5 + 1e-6 and quarter.mean() > 10 * dark
    torch.manual_seed(0)
    noisy = heatmaps + 0.05 * torch.randn_like(heatmaps)  # a network's output is no exact Gaussian
    smoothed = (dark_peaks(noisy, sigma=2.0)[0] - truth).norm(dim=1).mean()
    assert smoothed < 0.1 and smoothed < (quarter_peaks(noisy)[0] - truth).norm(dim=1).mean() / 3


def test_flip_test_on_a_symmetric_pose_changes_nothing():
    torch.manual_seed(0)
    heatmaps = torch.rand(2, len(NAMES), 16, 12) ** 4
    mirrored = flip_back(heatmaps, FLIP)  # what a flip-equivariant network answers for the mirrored crop
    metas = [{"inverse": invert_affine(crop_affine([40, 50], [30, 40], INPUT)), "score": 1.0, "label": 0}] * 2
    plain, averaged = decode(heatmaps, metas, stride=STRIDE), decode(heatmaps, metas, mirrored, FLIP, stride=STRIDE)
    for a, b in zip(plain, averaged):
        assert torch.allclose(a["keypoints"], b["keypoints"], atol=1e-5) and torch.allclose(a["scores"], b["scores"])


def test_unlabelled_and_outside_joints_get_weight_zero():
    pose = POSE.copy()
    pose[1] = 0  # unlabelled
    pose[3, :2] = [118, 2]  # outside the person's crop (x 2.5 to 77.5), on the right
    pose[4, :2] = [1, 50]  # and on the left
    crop, heatmaps, weights, meta = crops(fake_set(pose))[0]
    assert crop.dtype == torch.uint8 and crop.shape == (3, *INPUT)
    assert heatmaps.shape == (len(NAMES), INPUT[0] // STRIDE, INPUT[1] // STRIDE)
    assert weights.tolist() == [1, 0, 1, 0, 0]
    assert heatmaps[[1, 3, 4]].abs().max() == 0 and heatmaps[[0, 2]].amax((1, 2)).min() > 0.8
    assert meta["image_id"] == 7 and meta["index"] == 0 and meta["score"] == 1.0


def test_crowd_and_unlabelled_people_are_not_cropped():
    assert len(crops(fake_set(POSE, crowd=True))) == 0
    assert len(crops(fake_set(np.zeros((len(NAMES), 3))))) == 0


def test_training_flip_swaps_left_and_right_joints_and_their_weights():
    pose = POSE.copy()
    pose[1] = 0  # the left wrist is unlabelled: after a flip the right wrist channel must have weight 0
    data = crops(fake_set(pose), train=True)
    seen = set()
    for seed in range(16):
        torch.manual_seed(seed)
        _, heatmaps, weights, meta = data[0]
        flipped = bool(np.linalg.det(meta["inverse"][:, :2]) < 0)
        seen.add(flipped)
        peaks = decode(heatmaps[None], [meta], stride=STRIDE)[0]["keypoints"][0, :, :2]
        if flipped:
            assert weights.tolist() == [1, 1, 0, 1, 1]
            assert torch.allclose(peaks[[1, 3, 4]].double(), torch.as_tensor(pose[[2, 4, 3], :2]), atol=0.05)
        else:
            assert weights.tolist() == [1, 0, 1, 1, 1]
            assert torch.allclose(peaks[[2, 3, 4]].double(), torch.as_tensor(pose[[2, 3, 4], :2]), atol=0.05)
    assert seen == {True, False}


def test_augmented_crop_and_its_heatmap_agree():
    image = torch.zeros((3, 100, 120), dtype=torch.uint8)
    image[:, 49:52, 54:57] = 255  # a dot centred on the right wrist (55.5, 50.5)
    pose = POSE.copy()
    pose[2, :2] = [55.5, 50.5]
    data = crops(fake_set(pose, image=image), train=True, scale_jitter=0.3, rotation=40.0, rotation_prob=1.0)
    ys, xs = torch.meshgrid(torch.arange(INPUT[0]) + 0.5, torch.arange(INPUT[1]) + 0.5, indexing="ij")
    torch.manual_seed(3)
    for _ in range(6):
        crop, heatmaps, weights, meta = data[0]
        flipped = np.linalg.det(meta["inverse"][:, :2]) < 0
        channel = 1 if flipped else 2
        mass = crop[0].double()
        dot = torch.stack([(mass * xs).sum(), (mass * ys).sum()]) / mass.sum()
        peak = (dark_peaks(heatmaps[channel:channel + 1])[0][0] + 0.5) * STRIDE
        assert torch.allclose(dot.float(), peak, atol=0.3)


def test_collate_and_person_boxes_from_a_detector():
    data = crops(fake_set(POSE), person_boxes=[(0, [20, 10, 60, 90], 0.8, 0), (0, [0, 0, 30, 30], 0.4, 0)])
    images, heatmaps, weights, metas = TopDownSet.collate([data[0], data[1]])
    assert images.shape == (2, 3, *INPUT) and images.dtype == torch.uint8
    assert heatmaps.shape == (2, len(NAMES), 16, 12) and weights.shape == (2, len(NAMES))
    assert weights.sum() == 0 and [m["score"] for m in metas] == [0.8, 0.4]
    assert data.files == ["fake.png", "fake.png"] and data.keypoint_names == NAMES and data.classes == ["person"]


def test_input_size_must_be_a_multiple_of_the_stride():
    with pytest.raises(CvtoolError, match="not a multiple of the heatmap stride"):
        crops(fake_set(POSE), input_size=(66, 48))


def write(tmp_path, results) -> str:
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(results))
    return str(path)


def test_read_person_boxes_keeps_confident_boxes_as_xyxy(tmp_path):
    coco = {"images": [{"id": 7}, {"id": 8}], "categories": [{"id": 1, "name": "person"}]}
    path = write(tmp_path, [{"image_id": 7, "category_id": 1, "bbox": [10, 20, 30, 40], "score": 0.9},
                            {"image_id": 8, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.1}])
    boxes = read_person_boxes(path, coco, min_score=0.5)
    assert len(boxes) == 1 and boxes[0][0] == 7 and boxes[0][1].tolist() == [10, 20, 40, 60]
    assert boxes[0][2:] == (0.9, 1)
    assert indexed_person_boxes(boxes, fake_set(POSE))[0][0::2] == (0, 0.9)


@pytest.mark.parametrize("results,message", [
    ({"a": 1}, "not a list"),
    ([{"image_id": 7, "category_id": 1, "score": 0.5}], r"bbox None is not .*boxes.json \[0\]"),
    ([{"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}], r"image_id 9 .*\[0\]"),
    ([{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
      {"image_id": 7, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.5}], r"category_id 3 .*\[1\]"),
    ([{"image_id": 7, "category_id": 1, "bbox": [0, 0, -1, 1], "score": 0.5}], "width >= 0"),
])
def test_read_person_boxes_names_the_bad_entry(tmp_path, results, message):
    coco = {"images": [{"id": 7}], "categories": [{"id": 1, "name": "person"}]}
    with pytest.raises(CvtoolError, match=message):
        read_person_boxes(write(tmp_path, results), coco, min_score=0.0)


def test_read_person_boxes_of_a_missing_file(tmp_path):
    with pytest.raises(CvtoolError, match="person boxes file not found"):
        read_person_boxes(tmp_path / "none.json", {"images": [], "categories": []}, min_score=0.0)


def colours_in(picture) -> set[tuple[int, int, int]]:
    return {tuple(int(v) for v in c) for c in np.unique(np.asarray(picture).reshape(-1, 3), axis=0)}


def test_skeleton_overlay_colours_left_warm_and_right_cool():
    from cvtool.viz.skeleton import COOL, NEUTRAL, WARM, limb_colours, side, skeleton_overlay

    assert [side(n) for n in ("l_eye", "wrist_R", "RightHand", "nose")] == ["left", "right", "right", ""]

    colours = limb_colours(SKELETON, NAMES)  # head-left wrist, head-right wrist, left arm-leg, right, ankles
    assert colours[0] in WARM and colours[2] in WARM and colours[1] in COOL and colours[3] in COOL
    assert colours[4] in NEUTRAL and len(set(colours)) == len(colours)
    image = torch.zeros((3, 100, 120), dtype=torch.uint8)
    people = torch.as_tensor(POSE, dtype=torch.float32)[None]
    picture = skeleton_overlay(image, people, SKELETON, NAMES, scores=torch.full((1, 5), 0.9), min_score=0.5,
                               boxes=torch.tensor([[20.0, 10, 60, 90]]), labels=["person 0.90"])
    assert picture.size == (round(120 * 2.56), 256)
    pixels = colours_in(picture)
    assert {colours[2], colours[3], colours[4]} <= pixels  # limb colours (joints are drawn in the first ones)
    hidden = skeleton_overlay(image, people, SKELETON, NAMES, scores=torch.full((1, 5), 0.1), min_score=0.5)
    assert colours_in(hidden) == {(0, 0, 0)}
    truth = people.clone()
    truth[0, :, 2] = torch.tensor([2, 2, 0, 1, 1])
    drawn = colours_in(skeleton_overlay(image, truth, SKELETON, NAMES))
    assert colours[3] not in drawn and colours[2] in drawn  # the right wrist is unlabelled: no limb to it
    assert COOL[0] in drawn  # ... but the right ankle's joint disc


def test_stick_figure_targets_decode_to_their_annotations_and_subsets_keep_whole_images(tmp_path):
    from cvtool.data.coco_keypoints import open_keypoint_set
    from cvtool.data.stick_figures import generate_keypoints

    root = generate_keypoints(tmp_path / "sf", num_train=6, num_val=1, seed=0)
    images = open_keypoint_set(root, root / "annotations/person_keypoints_train.json", root / "images/train",
                               train=True, skip_invalid=False, problems=None, sigmas=None, flip_map=None)
    data = crops(images, train=True, input_size=(128, 96), scale_jitter=0.25, rotation=30.0, rotation_prob=0.6,
                 flip_perm=images.flip)
    torch.manual_seed(0)
    for i in range(len(data)):
        _, heatmaps, weights, meta = data[i]
        flipped = np.linalg.det(meta["inverse"][:, :2]) < 0
        truth = torch.as_tensor(data.instances[i].keypoints)[images.flip if flipped else slice(None)]
        decoded = decode(heatmaps[None], [meta], stride=STRIDE)[0]["keypoints"][0]
        labelled = weights > 0
        assert torch.allclose(decoded[labelled, :2].double(), truth[labelled, :2], atol=0.05)
    part = data.subset([len(data) - 1])
    last = data.instances[-1].index
    assert len(part.images) == 1 and len(part) == sum(p.index == last for p in data.instances)
    assert part.files == [str(images.items[last].file)] * len(part) and part[0][3]["index"] == 0
