"""COCO keypoints data: the stick-figure generator, the reader's checks (every problem named by file and index), the
flip map and the left/right-swapping flip."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision import tv_tensors

from cvtool.commands import data as data_command
from cvtool.data.coco_keypoints import (
    KeypointFlip,
    flip_permutation,
    keypoint_problems,
    load_keypoint_instances,
    open_keypoint_set,
)
from cvtool.data.shapes import ensure_shapes
from cvtool.data.stick_figures import KEYPOINT_NAMES, generate_keypoints
from cvtool.errors import CvtoolError

SYNTH = {"num_train": 20, "num_val": 10, "image_size": 128, "min_figures": 1, "max_figures": 3, "min_height": 35,
         "max_height": 110, "occlusion": 0.3, "seed": 0}
SIGMAS = [0.05, 0.06, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089, 0.089]
L_SH, R_SH = KEYPOINT_NAMES.index("left_shoulder"), KEYPOINT_NAMES.index("right_shoulder")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> Path:
    """A datasets/ root with tiny stick figures, generated through the shapes registry like `cvtool data synth`."""
    root = tmp_path_factory.mktemp("datasets")
    ensure_shapes("keypoints", root / "stick_figures", **SYNTH)
    return root


def _ann_file(root: Path, split: str = "train") -> Path:
    return root / "annotations" / f"person_keypoints_{split}.json"


def _open(root: Path, split: str = "train", **kwargs):
    kwargs = {"train": False, **kwargs}
    return open_keypoint_set(root, _ann_file(root, split), root / "images" / split, **kwargs)


def test_generated_figures_are_consistent_coco_keypoints(datasets):
    root = datasets / "stick_figures"
    for split, count in (("train", 20), ("val", 10)):
        coco = load_keypoint_instances(_ann_file(root, split))  # every reader check passes
        assert [im["id"] for im in coco["images"]] == list(range(1, count + 1))
        assert coco["categories"][0]["keypoints"] == list(KEYPOINT_NAMES)
        per_image = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=count + 1)[1:]
        assert per_image.min() >= 1 and per_image.max() <= 3
        for ann in coco["annotations"]:
            points = np.asarray(ann["keypoints"]).reshape(14, 3)
            labelled = points[:, 2] > 0
            assert ann["num_keypoints"] == labelled.sum() > 0
            assert (points[~labelled] == 0).all()
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and ann["area"] == pytest.approx(w * h)
            assert ((points[labelled, :2] >= [x, y]) & (points[labelled, :2] <= [x + w, y + h])).all()
            assert ((points[labelled, :2] >= 0) & (points[labelled, :2] < 128)).all()
    visibility = np.concatenate([np.asarray(a["keypoints"])[2::3] for a in coco["annotations"]])
    assert {0, 1, 2} <= set(visibility.tolist())  # hidden and unlabelled joints occur even in 10 images
    assert (root / "images" / "val" / coco["images"][0]["file_name"]).is_file()


def test_generated_ground_truth_scores_oks_ap_one_against_itself(datasets):
    """pycocotools reads the files as they are: the ground truth as results scores AP 1 with the 14 sigmas."""
    gt = COCO(str(_ann_file(datasets / "stick_figures", "val")))
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
               for a in gt.dataset["annotations"]]
    evaluation = COCOeval(gt, gt.loadRes(results), "keypoints")
    evaluation.params.kpt_oks_sigmas = np.array(SIGMAS)
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_generation_is_reproducible_by_seed(tmp_path):
    params = {**SYNTH, "num_train": 3, "num_val": 1}
    trees = [generate_keypoints(tmp_path / name, **{**params, "seed": seed}) for name, seed in
             (("a", 0), ("b", 0), ("c", 1))]
    files = [{p.relative_to(t): p.read_bytes() for p in sorted(t.rglob("*")) if p.is_file()} for t in trees]
    assert files[0] == files[1]
    assert files[0].keys() == files[2].keys() and files[0] != files[2]


def test_left_joints_lie_image_right_of_the_torso_before_and_after_a_flip(datasets):
    """Figures face the viewer (left shoulder on the image right); the flip with labels swapped keeps that true,
    so flipped training images agree with unflipped ones."""
    images = _open(datasets / "stick_figures")
    flip = KeypointFlip(images.flip, p=1.0)
    checked = 0
    for index in range(len(images)):
        image, target = images[index]
        _, flipped = flip(image, target)
        for points in (target["keypoints"], flipped["keypoints"]):
            both = (points[:, L_SH, 2] > 0) & (points[:, R_SH, 2] > 0)
            assert (points[both, L_SH, 0] > points[both, R_SH, 0]).all()
            checked += int(both.sum())
    assert checked > 20


def test_flip_permutation_pairs_left_and_right_names():
    assert flip_permutation(KEYPOINT_NAMES) == [0, 1, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12]
    names = ["nose", "l_eye", "r_eye", "LeftHand", "RightHand", "wrist_L", "wrist_R", "tail"]
    assert flip_permutation(names) == [0, 2, 1, 4, 3, 6, 5, 7]


def test_flip_permutation_given_in_the_config_overrides_the_names():
    names = ["a", "b", "left_c", "right_c"]
    assert flip_permutation(names, [["a", "b"]]) == [1, 0, 2, 3]  # left_c/right_c not paired: only what is given
    assert flip_permutation(names, [[0, 1], ["left_c", "right_c"]]) == [1, 0, 3, 2]
    assert flip_permutation(names, [1, 0, 2, 3]) == [1, 0, 2, 3]


@pytest.mark.parametrize(("names", "given", "message"), [
    (["head", "left_hand"], None, "'left_hand' has no mirror keypoint 'right_hand'"),
    (["a", "b", "c"], [1, 2, 0], "not its own inverse"),
    (["a", "b", "c"], [0, 1], r"not a permutation of 0..2"),
    (["a", "b"], [["a", "z"]], "flip map names 'z', not a keypoint"),
    (["a", "b", "c"], [["a", "b"], ["b", "c"]], "pairs keypoint 'b' twice"),
])
def test_bad_flip_maps_are_refused(names, given, message):
    with pytest.raises(CvtoolError, match=message) as err:
        flip_permutation(names, given)
    assert err.value.where == "dataset.flip_map"


def test_flip_moves_points_to_w_minus_x_and_swaps_left_and_right():
    image = tv_tensors.Image(torch.arange(100, dtype=torch.uint8).repeat(3, 10, 1))  # 100 px wide
    points = torch.tensor([[[10.0, 5.0, 2.0], [0.0, 0.0, 0.0]]])  # left_wrist at x=10, right_wrist unlabelled
    target = {"boxes": tv_tensors.BoundingBoxes([[5.0, 2.0, 20.0, 8.0]], format="XYXY", canvas_size=(10, 100)),
              "labels": torch.tensor([0]), "keypoints": points, "image_id": 1}
    perm = flip_permutation(["left_wrist", "right_wrist"])
    flipped_image, flipped = KeypointFlip(perm, p=1.0)(image, target)
    assert flipped["keypoints"].tolist() == [[[0.0, 0.0, 0.0], [90.0, 5.0, 2.0]]]  # now right_wrist at x=90
    assert flipped["boxes"].tolist() == [[80.0, 2.0, 95.0, 8.0]]
    assert flipped_image[0, 0, 0] == 99 and isinstance(flipped_image, tv_tensors.Image)
    assert target["keypoints"] is points and points[0, 0, 0] == 10  # the input is left as it was
    assert KeypointFlip(perm, p=0.0)(image, target)[1] is target


def _person(data: dict) -> dict:
    return data["categories"][0]


def _set(index: int, key: str, value):
    def edit(data: dict) -> None:
        data["annotations"][index][key] = value
    return edit


def _point(index: int, joint: int, value: list):
    def edit(data: dict) -> None:
        data["annotations"][index]["keypoints"][3 * joint:3 * joint + 3] = value
    return edit


def _labelled(data: dict, index: int) -> int:
    """A joint of annotation `index` with v=2."""
    return next(j for j in range(14) if data["annotations"][index]["keypoints"][3 * j + 2] == 2)


BAD = {  # edit of a valid file -> what the one-line error names
    "short keypoints": (lambda d: d["annotations"][2]["keypoints"].pop(),
                        r"annotations\[2\] has 41 keypoint numbers, not 3 x 14 = 42"),
    "v out of range": (lambda d: _point(1, _labelled(d, 1), [40.0, 40.0, 3])(d),
                       r"annotations\[1\] keypoint \d+ \(\w+\) has v=3, not 0, 1 or 2"),
    "v=0 not at 0,0": (lambda d: _point(3, _labelled(d, 3), [12.0, 7.0, 0])(d),
                       r"annotations\[3\] keypoint \d+ \(\w+\) is unlabelled \(v=0\) but at \(12, 7\)"),
    "num_keypoints": (lambda d: _set(0, "num_keypoints", 15)(d), r"annotations\[0\] has num_keypoints 15 but"),
    "outside box": (lambda d: _set(4, "bbox", [0.0, 0.0, 1.0, 1.0])(d),
                    r"annotations\[4\] keypoint \d+ \(\w+\) at \(.*\) lies outside its bbox"),
    "outside image": (lambda d: _point(5, _labelled(d, 5), [130.5, 40.0, 2])(d),
                      r"annotations\[5\] keypoint \d+ \(\w+\) at \(130.5, 40\) lies outside the 128x128 image"),
    "unknown category": (lambda d: _set(0, "category_id", 7)(d), r"annotations\[0\] refers to unknown category_id 7"),
    "bbox non-positive": (lambda d: _set(1, "bbox", [3.0, 3.0, 0.0, 9.0])(d),
                          r"annotations\[1\] has bbox \[3.0, 3.0, 0.0, 9.0\] of non-positive size"),
    "bbox outside image": (lambda d: _set(1, "bbox", [100.0, 3.0, 60.0, 9.0])(d),
                           r"annotations\[1\] has bbox .* outside the 128x128 image"),
    "skeleton index": (lambda d: _person(d)["skeleton"].__setitem__(2, [2, 15]),
                       r"categories\[0\] \('person'\) skeleton\[2\] \[2, 15\] has an index out of range 1..14"),
    "no keypoint names": (lambda d: _person(d).pop("keypoints"),
                          r"categories\[0\] \('person'\) has no 'keypoints'"),
    "two Ks": (lambda d: d["categories"].append({"id": 2, "name": "dog", "keypoints": [f"k{i}" for i in range(17)]}),
               "categories have 14 and 17 keypoints"),
}


@pytest.fixture(scope="module")
def valid(datasets) -> dict:
    return json.loads(_ann_file(datasets / "stick_figures").read_text())


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_annotation_is_one_error_naming_file_and_index(case, valid, tmp_path):
    edit, message = BAD[case]
    data = copy.deepcopy(valid)
    edit(data)
    path = tmp_path / "person_keypoints_bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CvtoolError, match=message) as err:
        load_keypoint_instances(path)
    assert err.value.where == str(path) and err.value.fix


def test_sigmas_of_another_length_than_k_are_refused(datasets):
    root = datasets / "stick_figures"
    with pytest.raises(CvtoolError, match="13 sigmas for 14 keypoints") as err:
        _open(root, sigmas=SIGMAS[:13])
    assert err.value.where == "dataset.sigmas"
    assert _open(root, sigmas=SIGMAS).sigmas == SIGMAS


def test_every_problem_is_listed_at_once(valid):
    data = copy.deepcopy(valid)
    for case in ("short keypoints", "num_keypoints", "v out of range", "skeleton index"):
        BAD[case][0](data)
    problems = keypoint_problems(data, "kp.json", SIGMAS[:2])
    assert len(problems) == 5, problems
    assert all(line.endswith("(kp.json)") for line in problems if "sigmas" not in line)
    assert any("2 sigmas for 14 keypoints (dataset.sigmas)" == line for line in problems)
    for fragment in ("annotations[2] has 41", "annotations[0] has num_keypoints", "annotations[1] keypoint",
                     "skeleton[2]"):
        assert any(fragment in line for line in problems), fragment


@pytest.fixture
def broken(datasets, tmp_path) -> Path:
    """A copy of the tiny data with two bad annotations (of train images 1 and 2) and a missing image (3)."""
    root = tmp_path / "stick_figures"
    shutil.copytree(datasets / "stick_figures", root)
    data = json.loads(_ann_file(root).read_text())
    first = {image: next(i for i, a in enumerate(data["annotations"]) if a["image_id"] == image) for image in (1, 2)}
    data["annotations"][first[1]]["num_keypoints"] += 1
    data["annotations"][first[2]]["keypoints"][2] = 5
    _ann_file(root).write_text(json.dumps(data))
    (root / "images" / "train" / "000003.png").unlink()
    return root


def test_bad_images_are_refused_skipped_or_all_listed(broken):
    with pytest.raises(CvtoolError, match=r"annotations\[\d+\] has num_keypoints .* \(and 2 more"):
        _open(broken, train=True)
    kept = _open(broken, train=True, skip_invalid=True)
    assert [item.image_id for item in kept.items] == list(range(4, 21))
    problems: list[str] = []
    assert len(_open(broken, problems=problems)) == 17
    assert len(problems) == 3 and "images[2] file missing" in problems[2]


def test_data_check_lists_every_problem_then_fails(broken, capsys):
    with pytest.raises(CvtoolError, match="3 invalid item") as err:
        data_command.check(["task=keypoints", "dataset=stick_figures", f"dataset.root={broken}", "dataset.synth=null"])
    assert err.value.where == str(broken)
    printed = capsys.readouterr().out.replace("\n", "")
    for fragment in ("num_keypoints", "has v=5", "file missing"):
        assert fragment in printed


def test_a_missing_root_says_what_it_should_hold(tmp_path):
    root = tmp_path / "coco"
    with pytest.raises(CvtoolError, match="dataset root not found") as err:
        open_keypoint_set(root, root / "annotations/person_keypoints_val2017.json", root / "val2017", train=False)
    assert "annotations/person_keypoints_val2017.json" in err.value.fix


def test_cached_subsets_and_image_size_mismatches(datasets):
    images = _open(datasets / "stick_figures", split="val")
    part = images.subset([2, 0])
    assert [item.image_id for item in part.items] == [3, 1] and part.flip == images.flip
    assert torch.equal(part.cache()[1][0], images[0][0])
    images.items[0].size = (64, 128)
    with pytest.raises(CvtoolError, match="image is 128x128 but its annotations say 64x128"):
        images[0]


def test_plain_images_take_the_annotation_files_categories(datasets):
    from cvtool.data.coco_keypoints import source_set

    root = datasets / "stick_figures"
    files = sorted((root / "images" / "val").glob("*.png"))[:2]
    images = source_set(files, _ann_file(root, "val"), ["person"], "two files", sigmas=SIGMAS)
    assert len(images) == 2 and images.keypoint_names == list(KEYPOINT_NAMES) and images.skeleton[0] == (0, 1)
    image, target = images[1]
    assert image.shape == (3, 128, 128) and target["keypoints"].shape == (0, 14, 3) and target["image_id"] == 2
    with pytest.raises(CvtoolError, match=r"the model knows categories \['dog'\]"):
        source_set(files, _ann_file(root, "val"), ["dog"], "two files")


def test_reading_annotations_never_imports_torch(datasets):
    """`cvtool eval predictions=` reads the ground truth through this module without torch."""
    import subprocess
    import sys

    code = ("import sys; from cvtool.data.coco_keypoints import load_keypoint_instances as load; "
            f"load({str(_ann_file(datasets / 'stick_figures', 'val'))!r}); assert 'torch' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
