"""The embedded glyph identities: LFW layout and pairs, determinism, distinct glyphs, nuisances that keep identity."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvtool.data import identity_glyphs as ig
from cvtool.data import shapes
from cvtool.data.identity_folders import split_identities
from cvtool.data.lfw_pairs import read_pairs
from cvtool.data.shapes import ensure_shapes
from cvtool.errors import CvtoolError

SMALL = {"num_identities": 12, "min_images": 3, "max_images": 5, "image_size": 64, "test_fraction": 1 / 3,
         "folds": 2, "pairs_per_fold": 3, "seed": 0}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return ig.generate_identities(tmp_path_factory.mktemp("glyphs") / "identities", **SMALL)


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _images(root: Path) -> dict[str, list[int]]:
    return {d.name: sorted(int(f.stem.rsplit("_", 1)[1]) for f in d.iterdir()) for d in root.iterdir() if d.is_dir()}


def test_writes_the_lfw_layout_of_numbered_rgb_jpegs(root):
    images = _images(root)
    assert sorted(images) == [f"glyph_{i:04d}" for i in range(1, 13)]
    # identity i's count is the first draw of default_rng([seed, i]), uniform in [3, 5]
    for i, name in enumerate(sorted(images)):
        count = int(np.random.default_rng([0, i]).integers(3, 6))
        assert images[name] == list(range(1, count + 1))
        assert sorted(f.name for f in (root / name).iterdir()) == [f"{name}_{n:04d}.jpg" for n in range(1, count + 1)]
    reference = io.BytesIO()
    Image.new("RGB", (64, 64)).save(reference, format="JPEG", quality=95)
    with Image.open(root / "glyph_0007" / "glyph_0007_0002.jpg") as image, Image.open(reference) as expected:
        assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (64, 64))
        assert image.quantization == expected.quantization  # the tables quality=95 writes
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == ["pairs.txt"]


def test_pairs_name_only_test_identities_in_lfw_format(root):
    pairs, folds, per_fold = read_pairs(root / "pairs.txt", images=_images(root))
    assert (folds, per_fold, len(pairs)) == (2, 3, 12)
    assert (root / "pairs.txt").read_text().splitlines()[0] == "2\t3"
    train, test = split_identities([f"glyph_{i:04d}" for i in range(1, 13)], 1 / 3, 0)
    assert len(test) == 4 and not set(train) & set(test)  # round(12 / 3) identities held out
    named = {name for pair in pairs for name, _ in (pair.left, pair.right)}
    assert named <= set(test) and not named & set(train)
    assert [p.same for p in pairs] == [True] * 3 + [False] * 3 + [True] * 3 + [False] * 3
    for fold in (0, 1):  # folds are identity-disjoint, as LFW's
        others = {name for p in pairs if p.fold != fold for name, _ in (p.left, p.right)}
        assert not {name for p in pairs if p.fold == fold for name, _ in (p.left, p.right)} & others


def test_same_seed_gives_identical_files_whatever_the_worker_count(root, tmp_path, monkeypatch):
    monkeypatch.setattr(shapes, "PARALLEL_MIN_IMAGES", 1)  # force the process pool for 48 images
    again = ig.generate_identities(tmp_path / "again", **SMALL)
    assert _tree_bytes(again) == _tree_bytes(root)
    other = _tree_bytes(ig.generate_identities(tmp_path / "other", **{**SMALL, "seed": 1}))
    first = _tree_bytes(root)
    shared = set(first) & set(other)
    assert shared and all(first[name] != other[name] for name in shared)


def test_registered_as_the_identities_shapes_kind(tmp_path, root):
    made = ensure_shapes("identities", tmp_path / "ids", **SMALL)
    assert {k: v for k, v in _tree_bytes(made).items() if k != shapes.MARKER} == _tree_bytes(root)


def test_generated_glyphs_obey_the_rejection_rule():
    identities = ig.distinct_glyphs(0, 30, (3, 5))
    poses = [ig.glyph_poses(glyph) for _, glyph in identities]
    assert all(3 <= len(glyph) <= 5 for _, glyph in identities)
    assert max(ig.glyph_overlap(glyph) for _, glyph in identities) <= ig.MAX_OVERLAP
    for j in range(1, len(poses)):
        canonical = np.stack([p[ig.CANONICAL] for p in poses[:j]])
        assert ig.glyph_iou(poses[j], canonical).max() <= ig.MAX_GLYPH_IOU  # every rotation, plain or mirrored


def _bend(angle: float, mirrored: bool = False) -> ig.Glyph:
    """An L-shaped glyph with a dot, rotated by `angle` degrees (mirrored first)."""
    t = np.deg2rad(angle)
    transform = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) * ((-1.0 if mirrored else 1.0), 1.0)
    return (ig.Stroke(ig.BEND, np.array([[-0.5, -0.5], [-0.5, 0.5], [0.2, 0.5]]) @ transform.T),
            ig.Stroke(ig.DOT, np.array([[0.3, -0.3]]) @ transform.T))


def test_rotated_or_mirrored_copies_of_an_earlier_glyph_are_redrawn(monkeypatch):
    ring = (ig.Stroke(ig.RING, np.array([[0.0, 0.0], [0.5, 0.0]])),)
    glyph = _bend(0)
    poses = ig.glyph_poses(glyph)
    # a copy rotated by 45 degrees or mirrored matches one of the checked poses exactly; a ring does not
    assert ig.glyph_iou(ig.glyph_poses(_bend(45)), poses[ig.CANONICAL][None]).max() > 0.9
    assert ig.glyph_iou(ig.glyph_poses(_bend(0, mirrored=True)), poses[ig.CANONICAL][None]).max() > 0.9
    assert ig.glyph_iou(ig.glyph_poses(ring), poses[ig.CANONICAL][None]).max() < 0.3
    drawn = iter([glyph, _bend(45), _bend(-30, mirrored=True), ring])
    monkeypatch.setattr(ig, "random_glyph", lambda rng: next(drawn))
    assert [g for _, g in ig.distinct_glyphs(0, 2, (3, 5))] == [glyph, ring]


def test_images_of_one_identity_share_its_glyph_and_others_do_not():
    identities = ig.distinct_glyphs(0, 12, (3, 5))
    canonical = np.stack([ig.glyph_poses(glyph)[ig.CANONICAL] for _, glyph in identities])
    same, different = [], []
    for i, (_, glyph) in enumerate(identities):
        for number in range(1, 6):
            # the jittered glyph image `number` draws first from its generator, seen in the canonical pose
            jittered = ig.glyph_poses(ig.jitter(np.random.default_rng([0, i, number]), glyph))[ig.CANONICAL]
            iou = ig.glyph_iou(jittered[None], canonical)[0]
            assert iou.argmax() == i  # the nearest glyph is always its own
            same.append(iou[i])
            different += [v for k, v in enumerate(iou) if k != i]
    assert min(same) > 0.45 and max(different) < 0.45
    assert np.mean(same) > 3 * np.mean(different)


def test_nuisances_keep_the_glyph_inside_the_image_at_half_to_two_thirds_of_its_side():
    _, glyph = ig.distinct_glyphs(3, 1, (1, 1))[0]
    extents, centres = [], []
    for k in range(60):
        alpha = ig.glyph_coverage(np.random.default_rng([1, k]), glyph, 64)
        rows, cols = np.nonzero(alpha >= 0.5)
        extents.append(max(np.ptp(rows), np.ptp(cols)) + 1)
        centres.append(((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2))
        assert np.all(alpha[[0, -1]] < 1) and np.all(alpha[:, [0, -1]] < 1)  # never cut by the border
    assert 0.5 * 64 <= np.median(extents) <= 0.75 * 64 and max(extents) <= 64
    assert np.ptp(np.array(centres), axis=0).min() > 6  # translated by several pixels


def test_paint_contrasts_the_glyph_with_its_background():
    alpha = np.zeros((32, 32), dtype=np.float32)
    alpha[8:24, 14:18] = 1.0
    for k in range(20):
        image = ig.paint(np.random.default_rng(k), alpha).astype(np.float32)
        ink, near = image[10:22, 15:17].reshape(-1, 3), image[10:22, 8:11].reshape(-1, 3)
        assert np.linalg.norm(ink.mean(axis=0) - near.mean(axis=0)) > 40


@pytest.mark.parametrize("params, where, fix", [
    ({"min_images": 6, "max_images": 5}, "dataset.synth.min_images", "adjust dataset.synth.min_images/max_images"),
    ({"folds": 10}, "dataset.synth.num_identities",
     "set dataset.synth.num_identities to at least 59 or lower dataset.synth.folds"),  # round(59 / 3) = 20 = 2 x 10
    ({"test_fraction": 1.0}, "dataset.synth.test_fraction", None),
    ({"image_size": 8}, "dataset.synth.image_size", None),
])
def test_bad_parameters_are_refused_before_anything_is_written(params, where, fix, tmp_path):
    with pytest.raises(CvtoolError) as error:
        ig.generate_identities(tmp_path / "ids", **{**SMALL, **params})
    assert error.value.where == where and (fix is None or error.value.fix == fix)
    assert not (tmp_path / "ids").exists()


def test_too_many_pairs_for_the_test_identities_is_refused(tmp_path):
    with pytest.raises(CvtoolError, match="lower dataset.pairs_per_fold"):
        ig.generate_identities(tmp_path / "ids", **{**SMALL, "pairs_per_fold": 100})
    assert not (tmp_path / "ids").exists()
