"""The synthetic shapes dataset: determinism, on-disk formats (ImageFolder, VOC devkit, COCO) and caching."""

from __future__ import annotations

import functools
import json
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from cvtool.data import shapes, shapes_draw
from cvtool.data.shapes import (
    SHAPE_CLASSES,
    VOC_PALETTE,
    ensure_shapes,
    generate_classification,
    generate_devkit,
)
from cvtool.data.shapes_draw import background, distinct_colour, outline, render_scene, shape_colour
from cvtool.errors import CvtoolError

CLS = {"num_train": 35, "num_val": 10, "min_size": 12, "max_size": 48, "seed": 0}
DEVKIT = {"num_train": 16, "num_val": 8, "seed": 0}


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory) -> Path:
    return generate_classification(tmp_path_factory.mktemp("cls") / "shapes", **CLS)


@pytest.fixture(scope="module")
def devkit_root(tmp_path_factory) -> Path:
    return generate_devkit(tmp_path_factory.mktemp("devkit") / "shapes", **DEVKIT)


def _mask_of(root: Path, image_path: Path) -> np.ndarray:
    with Image.open(root / "masks" / image_path.relative_to(root).parent.parent.name / image_path.parent.name
                    / image_path.name) as mask_image:
        assert mask_image.mode == "1"
        return np.asarray(mask_image)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Reference square dilation, written independently of the generator's."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            src = mask[max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
            out[max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] |= src
    return out


def _voc_objects(root: Path, image_id: str) -> list[dict]:
    tree = ET.parse(root / "Annotations" / f"{image_id}.xml").getroot()
    objects = []
    for obj in tree.iter("object"):
        box = obj.find("bndbox")
        objects.append({"name": obj.findtext("name"), "difficult": int(obj.findtext("difficult")),
                        "box": tuple(int(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))})
    return objects


def _ids(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Main" / f"{split}.txt").read_text().split()


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    small = {"num_train": 6, "num_val": 2}
    a = _tree_bytes(generate_classification(tmp_path / "a", **small, seed=3))
    b = _tree_bytes(generate_classification(tmp_path / "b", **small, seed=3))
    c = _tree_bytes(generate_classification(tmp_path / "c", **small, seed=4))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.endswith(".png") and "masks" not in k)
    d = _tree_bytes(generate_devkit(tmp_path / "d", num_train=3, num_val=2, seed=3))
    e = _tree_bytes(generate_devkit(tmp_path / "e", num_train=3, num_val=2, seed=3))
    f = _tree_bytes(generate_devkit(tmp_path / "f", num_train=3, num_val=2, seed=4))
    assert d == e and len(d) > 30
    assert d["JPEGImages/000000.jpg"] != f["JPEGImages/000000.jpg"]


def test_parallel_generation_writes_the_same_bytes_as_serial(tmp_path, monkeypatch):
    serial = _tree_bytes(generate_devkit(tmp_path / "serial", num_train=5, num_val=3))
    monkeypatch.setattr(shapes, "PARALLEL_MIN_IMAGES", 1)
    monkeypatch.setattr(shapes, "MAX_WORKERS", 2)
    assert _tree_bytes(generate_devkit(tmp_path / "parallel", num_train=5, num_val=3)) == serial


def test_image_content_does_not_depend_on_split_sizes(tmp_path):
    few = _tree_bytes(generate_devkit(tmp_path / "few", num_train=2, num_val=1))
    many = _tree_bytes(generate_devkit(tmp_path / "many", num_train=4, num_val=1))
    for name in ("JPEGImages/000000.jpg", "JPEGImages/000001.jpg", "Annotations/000001.xml"):
        assert few[name] == many[name]
    # val image 0 gets id 000002 in one and 000004 in the other, but the same pixels
    assert few["JPEGImages/000002.jpg"] == many["JPEGImages/000004.jpg"]


def test_classification_is_a_balanced_imagefolder_of_64px_rgb(cls_root):
    for split, count in (("train", CLS["num_train"]), ("val", CLS["num_val"])):
        assert sorted(p.name for p in (cls_root / split).iterdir()) == sorted(SHAPE_CLASSES)
        for name in SHAPE_CLASSES:
            files = sorted((cls_root / split / name).glob("*.png"))
            assert len(files) == count // len(SHAPE_CLASSES)
            assert all(f.name.startswith(f"{name}_") for f in files)
            for f in files[:2]:
                with Image.open(f) as image:
                    assert (image.mode, image.size) == ("RGB", (64, 64))
    assert (cls_root / "train" / "square" / "square_000001.png").is_file()  # image i has class i % 5


def test_classification_masks_match_images_and_respect_size_range(cls_root):
    extents = []
    for image_path in sorted((cls_root / "train").rglob("*.png")):
        mask = _mask_of(cls_root, image_path)
        x0, y0, x1, y1 = _bbox(mask)
        extents.append(max(x1 - x0, y1 - y0) + 1)
        image = np.asarray(Image.open(image_path), dtype=np.float32)
        inside, ring = image[mask].mean(0), image[_dilate(mask, 4) & ~_dilate(mask, 1)].mean(0)
        assert np.linalg.norm(inside - ring) > 15  # the shape is visible where its mask says
    assert CLS["min_size"] - 2 <= min(extents) and max(extents) <= CLS["max_size"] + 2
    assert max(extents) - min(extents) > 20  # sizes really vary


def test_backgrounds_are_textured_not_flat(cls_root):
    for seed in range(200):
        assert background(np.random.default_rng(seed), 64).reshape(-1, 3).std(0).mean() > 7
    # After the image's pixel noise, 4x4 block means still vary: flat colour + noise would give <= 15/4
    stds = []
    for image_path in sorted((cls_root / "train").rglob("*.png")):
        mask = _mask_of(cls_root, image_path)
        blocks = np.asarray(Image.open(image_path), dtype=np.float32).reshape(16, 4, 16, 4, 3).mean((1, 3))
        outside = ~_dilate(mask, 2).reshape(16, 4, 16, 4).any((1, 3))
        stds.append(blocks[outside].std(0).mean())
    assert np.median(stds) > 15


def test_shape_colour_contrasts_with_the_mean_and_most_pixels_under_it():
    rng = np.random.default_rng(0)
    for _ in range(100):
        under = rng.uniform(0, 255, 3) + rng.normal(0, 30, (500, 3))
        colour = shape_colour(rng, under.astype(np.float32))
        assert np.linalg.norm(colour - under.mean(0)) >= 60
        assert np.percentile(np.linalg.norm(under - colour, axis=1), 25) >= 40
    # a two-colour checkerboard: far enough from its mean is not enough, the colour must avoid both squares
    squares = np.array([[200.0, 30.0, 30.0], [30.0, 30.0, 200.0]], dtype=np.float32)
    for _ in range(100):
        colour = shape_colour(rng, np.repeat(squares, 200, axis=0))
        assert np.linalg.norm(squares - colour, axis=1).min() >= 40


def test_background_colour_pairs_keep_their_distance_or_take_the_farthest_corner():
    rng = np.random.default_rng(0)
    for reference in rng.uniform(0, 255, (200, 3)):
        assert np.linalg.norm(distinct_colour(rng, reference, 60.0) - reference) >= 60
    assert distinct_colour(rng, np.array([10.0, 200.0, 128.0]), 400.0).tolist() == [255.0, 0.0, 0.0]


def test_occluded_objects_keep_only_their_visible_pixels_or_are_dropped(monkeypatch):
    def square(size, cx, cy):
        return outline(1, size, 0.0) + (cx, cy)

    # drawing order: A [20,60)^2, B [50,90)^2 over a corner of A, a triangle, then D [85,115)x[15,45) over it
    layout = [(1, square(40, 40, 40)), (1, square(40, 70, 70)), (2, outline(2, 20, 0.0) + (100, 30)),
              (1, square(30, 100, 30))]
    monkeypatch.setattr(shapes_draw, "_place", lambda *args: layout)
    scene = render_scene(np.random.default_rng(0), 128, [1, 1, 2, 1], (12, 48))
    assert scene.labels == [1, 1, 1]  # the triangle lies wholly under D: neither drawn nor annotated
    a, b, d = scene.masks
    assert (a.sum(), b.sum(), d.sum()) == (1600 - 100, 1600, 900)
    assert not (a & b).any() and _bbox(a) == (20, 20, 59, 59) and _bbox(d) == (85, 15, 114, 44)


def test_voc_boxes_are_one_based_inclusive_and_match_instance_masks(devkit_root):
    difficult = []
    for image_id in _ids(devkit_root, "trainval"):
        objects = _voc_objects(devkit_root, image_id)
        instance_map = np.asarray(Image.open(devkit_root / "SegmentationObject" / f"{image_id}.png"))
        class_map = np.asarray(Image.open(devkit_root / "SegmentationClass" / f"{image_id}.png"))
        assert 1 <= len(objects) <= 4 and instance_map.max(initial=0) <= 255
        for index, obj in enumerate(objects, start=1):
            mask = instance_map == index
            x0, y0, x1, y1 = _bbox(mask)
            assert obj["box"] == (x0 + 1, y0 + 1, x1 + 1, y1 + 1)
            assert set(np.unique(class_map[mask])) == {SHAPE_CLASSES.index(obj["name"]) + 1}
            assert obj["difficult"] == int(mask.sum() < 100)
            difficult.append(obj["difficult"])
        root = ET.parse(devkit_root / "Annotations" / f"{image_id}.xml").getroot()
        assert root.findtext("filename") == f"{image_id}.jpg" and root.findtext("segmented") == "1"
        assert [root.findtext(f"size/{k}") for k in ("width", "height", "depth")] == ["128", "128", "3"]
    assert 0 < sum(difficult) < len(difficult)


def test_voc_image_sets_list_splits_and_class_presence(devkit_root):
    train, val = _ids(devkit_root, "train"), _ids(devkit_root, "val")
    assert train == [f"{i:06d}" for i in range(DEVKIT["num_train"])]
    assert val == [f"{i:06d}" for i in range(DEVKIT["num_train"], DEVKIT["num_train"] + DEVKIT["num_val"])]
    assert _ids(devkit_root, "trainval") == train + val
    assert (devkit_root / "ImageSets" / "Segmentation" / "val.txt").read_text().split() == val
    for name in SHAPE_CLASSES:
        lines = (devkit_root / "ImageSets" / "Main" / f"{name}_train.txt").read_text().splitlines()
        assert [line.split()[0] for line in lines] == train
        for line in lines:
            image_id, flag = line[:6], line[6:]
            objects = [o for o in _voc_objects(devkit_root, image_id) if o["name"] == name]
            expected = -1 if not objects else (0 if all(o["difficult"] for o in objects) else 1)
            assert flag == f" {expected:2d}"


def test_coco_json_loads_with_noncontiguous_ids_and_rle_matching_area_and_bbox(devkit_root):
    coco = COCO(str(devkit_root / "annotations" / "instances_train.json"))
    assert sorted(coco.getCatIds()) == [2 * k + 1 for k in range(len(SHAPE_CLASSES))]
    assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == list(SHAPE_CLASSES)
    assert len(coco.getImgIds()) == DEVKIT["num_train"]
    for image in coco.loadImgs(coco.getImgIds()):
        assert (devkit_root / image["file_name"]).is_file()
        instance_map = np.asarray(Image.open(devkit_root / "SegmentationObject" / f"{image['id']:06d}.png"))
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(anns) == len(_voc_objects(devkit_root, f"{image['id']:06d}"))
        for index, ann in enumerate(anns, start=1):
            mask = coco.annToMask(ann).astype(bool)
            assert np.array_equal(mask, instance_map == index)
            assert ann["area"] == mask.sum() and ann["iscrowd"] == 0
            x0, y0, x1, y1 = _bbox(mask)
            assert ann["bbox"] == [x0, y0, x1 + 1 - x0, y1 + 1 - y0]


def test_segmentation_pngs_use_voc_palette_with_void_ring_around_objects(devkit_root):
    assert VOC_PALETTE[:9] == [0, 0, 0, 128, 0, 0, 0, 128, 0] and VOC_PALETTE[-3:] == [224, 224, 192]
    for image_id in _ids(devkit_root, "trainval"):
        for folder in ("SegmentationClass", "SegmentationObject"):
            with Image.open(devkit_root / folder / f"{image_id}.png") as image:
                assert image.mode == "P" and image.getpalette() == VOC_PALETTE
        classes = np.asarray(Image.open(devkit_root / "SegmentationClass" / f"{image_id}.png"))
        assert set(np.unique(classes)) <= {*range(len(SHAPE_CLASSES) + 1), 255}
        objects = (classes > 0) & (classes < 255)
        # void = every non-object pixel within 2 px (chessboard) of an object, nothing else
        assert np.array_equal(classes == 255, _dilate(objects, 2) & ~objects)
        assert (classes == 0).any()


def _counting(generator):
    calls = []

    @functools.wraps(generator)
    def wrapper(root, **params):
        calls.append(params)
        time.sleep(0.2)  # widen the race window for the concurrency test
        return generator(root, **params)

    return wrapper, calls


def test_ensure_shapes_generates_once_and_again_only_when_params_change(tmp_path, monkeypatch):
    wrapper, calls = _counting(generate_classification)
    monkeypatch.setitem(shapes._GENERATORS, "classification", wrapper)
    root = tmp_path / "datasets" / "shapes"
    assert ensure_shapes("classification", root, num_train=6, num_val=6) == root
    first = (root / "train" / "circle" / "circle_000000.png").stat().st_mtime_ns
    ensure_shapes("classification", root, num_train=6, num_val=6, seed=0)  # same, defaults spelled out
    assert len(calls) == 1
    assert (root / "train" / "circle" / "circle_000000.png").stat().st_mtime_ns == first
    marker = json.loads((root / ".shapes.json").read_text())
    assert marker["params"]["image_size"] == 64 and marker["version"] == shapes.GENERATOR_VERSION
    ensure_shapes("classification", root, num_train=10, num_val=5)
    assert len(calls) == 2 and len(list((root / "train" / "circle").glob("*.png"))) == 2
    assert sorted(p.name for p in root.parent.iterdir()) == [".shapes.lock", "shapes"]


def test_ensure_shapes_leaves_nothing_behind_when_generation_fails(tmp_path, monkeypatch):
    def failing(root, **params):
        generate_classification(root, **params)
        raise KeyboardInterrupt  # e.g. the user pressed Ctrl-C near the end

    failing = functools.wraps(generate_classification)(failing)
    monkeypatch.setitem(shapes._GENERATORS, "classification", failing)
    root = tmp_path / "shapes"
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes("classification", root, num_train=6, num_val=0)
    assert not root.exists() and [p.name for p in tmp_path.iterdir()] == [".shapes.lock"]


def test_ensure_shapes_generates_once_when_two_callers_race(tmp_path, monkeypatch):
    wrapper, calls = _counting(generate_classification)
    monkeypatch.setitem(shapes._GENERATORS, "classification", wrapper)
    root = tmp_path / "shapes"
    threads = [threading.Thread(target=ensure_shapes, args=("classification", root),
                                kwargs={"num_train": 6, "num_val": 0}) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and (root / ".shapes.json").is_file()


def test_ensure_shapes_refuses_to_replace_a_foreign_directory(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("user data")
    with pytest.raises(CvtoolError, match="not a generated shapes dataset"):
        ensure_shapes("classification", root, num_train=6, num_val=0)
    assert (root / "notes.txt").read_text() == "user data"


@pytest.mark.parametrize(("kind", "params", "message"), [
    ("mosaic", {"num_train": 1, "num_val": 0}, "unknown shapes dataset kind"),
    ("classification", {"num_train": 1, "num_val": 0, "colour": 3}, "bad shapes parameters"),
    ("classification", {"num_train": 1, "num_val": 0, "min_size": 50}, "min_size <= max_size"),
    ("devkit", {"num_train": 1, "num_val": 0, "min_objects": 0}, "min_objects"),
])
def test_bad_parameters_are_user_errors(tmp_path, kind, params, message):
    with pytest.raises(CvtoolError, match=message):
        ensure_shapes(kind, tmp_path / "shapes", **params)
