"""The embedded synthetic words: MJSynth layout and annotations, disjoint train/test words, determinism, fonts."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from cvtool.data import shapes
from cvtool.data import synth_words as sw
from cvtool.errors import CvtoolError

SMALL = {"train_words": 12, "renders": 3, "val_renders": 2, "test_words": 8, "test_renders": 2, "numbers": 0.25,
         "seed": 0}
TINY = {"train_words": 3, "renders": 2, "val_renders": 1, "test_words": 2, "test_renders": 1, "seed": 5}
LINE = re.compile(r"\./(\d+)/(\d+)/(\d+)_([A-Za-z0-9]+)_(\d+)\.jpg (\d+)")


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return sw.generate_words(tmp_path_factory.mktemp("words") / "mjsynth", **SMALL)


def _lines(root: Path, split: str) -> list[re.Match]:
    lines = (root / f"annotation_{split}.txt").read_text().splitlines()
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    return matches


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_shipped_word_list_is_6000_distinct_lower_case_words():
    words = sw.word_list()
    assert len(words) == len(set(words)) == 6000
    assert all(re.fullmatch(r"[a-z]{3,14}", word) for word in words)
    assert words[:3] == ("the", "and", "for")  # most frequent first


def test_writes_mjsynth_annotations_whose_indices_name_the_rendered_words(root):
    lexicon = (root / "lexicon.txt").read_text().splitlines()
    assert len(lexicon) == len(set(lexicon)) == 12 + 8
    splits = {split: _lines(root, split) for split in sw.SPLITS}
    assert {split: len(lines) for split, lines in splits.items()} == {"train": 36, "val": 24, "test": 16}
    all_lines = (root / "annotation.txt").read_text().splitlines()
    assert all_lines == [m.group(0) for split in sw.SPLITS for m in splits[split]]
    for m in (m for lines in splits.values() for m in lines):
        a, b, n, word, name_index, index = m.groups()
        assert name_index == index and lexicon[int(index)] == word.lower()
        assert word in (word.lower(), word.capitalize(), word.upper())
        assert (root / m.group(0).split()[0]).is_file()
    # running numbers: 200 images per <a>/<b> folder, 5 <b> per <a>, in job order train, val, test
    numbers = [tuple(int(g) for g in LINE.fullmatch(line).groups()[:3]) for line in all_lines]
    assert numbers[:2] == [(1, 1, 1), (1, 1, 2)] and numbers[-1] == (1, 1, 76)
    assert sw._folder_name(0) == "1/1/1" and sw._folder_name(199) == "1/1/200" and sw._folder_name(200) == "1/2/1"
    assert sw._folder_name(999) == "1/5/200" and sw._folder_name(1000) == "2/1/1"


def test_test_words_never_occur_in_training_and_val_rerenders_every_training_word(root):
    lexicon = (root / "lexicon.txt").read_text().splitlines()
    index = {split: Counter(int(m.group(6)) for m in _lines(root, split)) for split in sw.SPLITS}
    assert index["train"] == Counter({k: 3 for k in range(12)})  # training words first in the lexicon
    assert index["val"] == Counter({k: 2 for k in range(12)})
    assert index["test"] == Counter({k: 2 for k in range(12, 20)})
    train_files = {m.group(0).split()[0] for m in _lines(root, "train")}
    assert not train_files & {m.group(0).split()[0] for m in _lines(root, "val")}  # new renderings
    # numbers=0.25: round(3.0) of the training and round(2.0) of the test words are digit strings of 2-6 digits
    digits = [[w for w in lexicon[s] if w.isdigit()] for s in (slice(0, 12), slice(12, 20))]
    assert [len(d) for d in digits] == [3, 2] and all(2 <= len(w) <= 6 for w in digits[0] + digits[1])
    assert set(lexicon) - set(digits[0] + digits[1]) <= set(sw.word_list())


def test_images_are_32_px_high_rgb_jpegs_as_wide_as_their_word(root):
    widths = {}
    for m in _lines(root, "train") + _lines(root, "test"):
        with Image.open(root / m.group(0).split()[0]) as image:
            image.load()
            assert (image.format, image.mode, image.height) == ("JPEG", "RGB", 32)
            widths[m.group(4)] = image.width
    short, long = min(widths, key=len), max(widths, key=len)
    assert len(short) < len(long) and widths[short] < widths[long]


def test_fonts_auto_are_pillows_and_installed_fonts_that_draw_the_charset(root):
    fonts = (root / "fonts.txt").read_text().splitlines()
    assert fonts == sw.resolve_fonts("auto")
    assert fonts[0] == "bundled" and fonts[1:] == sorted(fonts[1:])
    assert all(Path(f).is_relative_to(sw.FONT_DIR) and Path(f).suffix.lower() in (".ttf", ".otf") for f in fonts[1:])
    assert sw.resolve_fonts("bundled") == ["bundled"]


def test_same_parameters_give_identical_files_whatever_the_worker_count(tmp_path, monkeypatch):
    first = _tree_bytes(sw.generate_words(tmp_path / "a", fonts="bundled", **TINY))
    monkeypatch.setattr(shapes, "PARALLEL_MIN_IMAGES", 1)  # now spread over worker processes
    assert _tree_bytes(sw.generate_words(tmp_path / "b", fonts="bundled", **TINY)) == first
    assert first["fonts.txt"] == b"bundled\n" and len([f for f in first if f.endswith(".jpg")]) == 6 + 3 + 2
    other = sw.generate_words(tmp_path / "c", fonts="bundled", **{**TINY, "seed": 6})
    assert (other / "lexicon.txt").read_bytes() != first["lexicon.txt"]


def test_word_mask_fills_the_height_and_width_as_documented():
    font = ImageFont.load_default(64)
    for seed in range(20):
        mask = np.asarray(sw._word_mask(np.random.default_rng(seed), "Hg", font, 32)) >= 128
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        # the warped line box spans 60-90 % of the height; "Hg" reaches from its ascender to its descender
        assert 0.45 * 32 <= rows[-1] - rows[0] + 1 <= 0.9 * 32 + 1
        # padding, side bearings and the corners that shear and rotation add leave at most 10 px either side
        assert cols[0] <= sw.PADDING[1] + 6 and cols[-1] >= mask.shape[1] - 1 - sw.PADDING[1] - 6


def test_ink_contrasts_with_three_quarters_of_the_pixels_under_it():
    rng = np.random.default_rng(0)
    for _ in range(50):
        under = np.clip(rng.uniform(0, 255) + rng.normal(0, 20, (40, 3)), 0, 255).astype(np.float32)
        ink = sw._contrasting(rng, under)
        assert (np.abs(under @ sw.LUMA - ink @ sw.LUMA) >= sw.MIN_CONTRAST).mean() >= 0.75


def test_registered_with_shapes_and_marker_records_auto_fonts(tmp_path):
    root = shapes.ensure_shapes("words", tmp_path / "words", **TINY)
    marker = json.loads((root / shapes.MARKER).read_text())
    assert marker["kind"] == "words" and marker["params"]["fonts"] == "auto" and marker["params"]["height"] == 32
    assert (root / "fonts.txt").read_text().splitlines() == sw.resolve_fonts("auto")


@pytest.mark.parametrize(("params", "where"), [
    ({"renders": 0}, "dataset.synth.renders"),
    ({"test_words": 0}, "dataset.synth.test_words"),
    ({"height": 15}, "dataset.synth.height"),
    ({"numbers": 1.5}, "dataset.synth.numbers"),
    ({"train_words": 5990, "test_words": 11, "numbers": 0}, "dataset.synth.train_words"),
    ({"fonts": ["/no/such/font.ttf"]}, "dataset.synth.fonts"),
    ({"fonts": [str(sw.WORDS_FILE)]}, "dataset.synth.fonts"),
    ({"fonts": []}, "dataset.synth.fonts"),
])
def test_bad_parameters_are_refused(tmp_path, params, where):
    with pytest.raises(CvtoolError) as error:
        sw.generate_words(tmp_path / "words", **{**TINY, **params})
    assert error.value.where == where
    assert not (tmp_path / "words").exists()


def test_word_count_limit_counts_digit_strings_apart():
    # 5990 + 20 words with numbers=0.01: round(59.9) + round(0.2) = 60 digit strings, 5950 dictionary words
    sw._check({"train_words": 5990, "renders": 1, "val_renders": 1, "test_words": 20, "test_renders": 1}, 32, 0.01)


def test_generates_without_torch(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pathlib import Path\n"
            "from cvtool.data.synth_words import generate_words\n"
            f"generate_words(Path({str(tmp_path / 'w')!r}), train_words=1, renders=1, val_renders=1, test_words=1, "
            "test_renders=1, fonts='bundled')\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "w" / "annotation_test.txt").read_text().count("\n") == 1
