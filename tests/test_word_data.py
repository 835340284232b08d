"""Word recognition data: the charset (folding, unknown characters, CTC classes and frames), MJSynth and
`path<TAB>text` annotations (every bad line named file:line), and the stretched word image dataset."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvtool.data.charset import Charset, check_labels, ctc_frames_needed
from cvtool.data.word_annotations import (
    WordItem,
    read_annotations,
    read_lexicon,
    read_text_file,
    write_text_file,
)
from cvtool.data.word_sets import open_word_set
from cvtool.errors import CvtoolError

DIGITS_LOWER = "0123456789abcdefghijklmnopqrstuvwxyz"
LEXICON = ["heretical", "apple", "Zoo", "cab"]


def save_image(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def constant(height: int, width: int, value: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(value, dtype=np.uint8), (height, width, 3)).copy()


@pytest.fixture
def mjsynth(tmp_path) -> Path:
    """An MJSynth layout: 3 PNG word images (lossless, so pixel values are exact), lexicon.txt, annotation_train.txt
    (a blank line 3 shifts the line numbers)."""
    save_image(tmp_path / "1/1/7_Heretical_0.png", constant(20, 60, (200, 10, 10)))
    save_image(tmp_path / "1/2/8_banana_1.png", constant(40, 90, (0, 255, 0)))
    save_image(tmp_path / "2/1/9_CAB_3.png", constant(31, 47, (5, 6, 7)))
    (tmp_path / "lexicon.txt").write_text("\n".join(LEXICON) + "\n")
    (tmp_path / "annotation_train.txt").write_text(
        "./1/1/7_Heretical_0.png 0\n./1/2/8_banana_1.png 1\n\n./2/1/9_CAB_3.png 3\n")
    return tmp_path / "annotation_train.txt"


def raises_at(where: str, match: str, call, *args, **kwargs) -> CvtoolError:
    """The CvtoolError of `call`, checked to name `where` in its one-line message."""
    with pytest.raises(CvtoolError, match=match) as info:
        call(*args, **kwargs)
    assert info.value.where == where
    assert f"({where})" in info.value.line()
    return info.value


# --- charset ------------------------------------------------------------------------------------------------------
def test_charset_classes_start_at_one_after_the_blank():
    charset = Charset("abc")
    assert len(charset) == 3
    assert charset.encode("cab") == [3, 1, 2]
    assert charset.decode([0, 3, 3, 0, 1, 2]) == "ccab"  # blanks skipped, repeats kept (no CTC collapsing)
    with pytest.raises(ValueError, match="outside 0..3"):
        charset.decode([4])
    with pytest.raises(ValueError, match="check"):
        charset.encode("abd")


@pytest.mark.parametrize("case, folded", [("lower", "mcdonald's"), ("upper", "MCDONALD'S"), ("keep", "McDonald's")])
def test_fold_changes_case_only(case, folded):
    assert Charset("'" + ("ACDLMNOS" if case == "upper" else "acdlmnos"), case=case).fold("McDonald's") == folded


def test_unknown_characters_error_names_file_line_label_and_fix():
    error = raises_at("annotation_train.txt:12", "outside task.charset: '-!'", Charset(DIGITS_LOWER).check,
                      "Re-use!", "annotation_train.txt:12")
    assert "label 'Re-use!'" in error.what
    assert error.fix == "add them to task.charset, or set task.unknown_chars=drop|skip"


def test_unknown_characters_dropped_or_skipped_by_policy():
    assert Charset(DIGITS_LOWER, unknown="drop").check("Re-use!", "f:1") == "reuse"
    assert Charset(DIGITS_LOWER, unknown="skip").check("Re-use!", "f:1") is None
    assert Charset(DIGITS_LOWER, unknown="skip").check("Reuse", "f:1") == "reuse"


@pytest.mark.parametrize("chars, kwargs, match", [
    ("", {}, "empty"),
    ("abca", {}, "repeats 'a'"),
    ("abC", {}, "never occur"),  # lower folding: the class of C could never be a target
    ("ab\t", {"case": "keep"}, "control characters"),
    (1234, {}, "must be a string"),
])
def test_charset_refuses_bad_character_lists(chars, kwargs, match):
    raises_at("task.charset", match, Charset, chars, **kwargs)


def test_charset_refuses_unknown_options():
    raises_at("task.case", "unknown case", Charset, "ab", case="title")
    raises_at("task.unknown_chars", "unknown policy", Charset, "ab", unknown="ignore")


@pytest.mark.parametrize("targets, frames", [([], 0), ([1, 2, 3], 3), ([1, 1, 2], 4), ([1, 1, 1], 5),
                                             ([1, 2, 1, 2], 4), ([5, 5, 6, 6], 6)])
def test_ctc_frames_count_a_blank_between_repeats(targets, frames):
    assert ctc_frames_needed(targets) == frames


def items_of(*texts: str) -> list[WordItem]:
    return [WordItem(f"/data/{i}.png", text, i + 1, "gt.txt") for i, text in enumerate(texts)]


def test_check_labels_encodes_kept_items_and_counts_skipped(caplog):
    items = items_of("Cab", "a-b", "aab")
    with caplog.at_level(logging.WARNING):
        kept, targets, skipped = check_labels(items, Charset("abc", unknown="skip"), frames=4)
    assert kept == [items[0], items[2]]
    assert targets == [[3, 1, 2], [1, 1, 2]]
    assert skipped == 1
    assert "skipped 1 label(s)" in caplog.text and "gt.txt:2" in caplog.text


def test_check_labels_refuses_labels_longer_than_the_frames():
    kept, _, _ = check_labels(items_of("aab"), Charset("abc"), frames=4)  # 3 characters + 1 repeat fit 4 frames
    assert len(kept) == 1
    error = raises_at("gt.txt:2", r"label 'aaBb' needs 6 CTC frames \(4 characters \+ 2 repeats\) but the model emits "
                      "5 for images 20 px wide", check_labels, items_of("ab", "aaBb"), Charset("abc"), 5, width=20)
    assert error.fix == "widen dataset.image_size or drop such labels"


def test_check_labels_refuses_empty_labels_and_unknown_characters():
    raises_at("gt.txt:2", r"the label of /data/1.png is empty \(gt.txt:2\)", check_labels, items_of("ab", ""),
              Charset("abc"), None)
    raises_at("gt.txt:1", "empty after dropping", check_labels, items_of("--"), Charset("abc", unknown="drop"), None)
    raises_at("gt.txt:3", r"outside task.charset: 'd'", check_labels, items_of("a", "b", "abd"), Charset("abc"), None)


def test_charset_and_annotations_import_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import cvtool.data.charset, cvtool.data.word_annotations\n"
            "assert 'torchvision' not in sys.modules")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert result.returncode == 0, result.stderr


# --- annotations --------------------------------------------------------------------------------------------------
def test_mjsynth_text_is_the_lexicon_word_in_the_file_name_case(mjsynth):
    root = mjsynth.parent
    items = read_annotations(mjsynth)
    assert items == [
        WordItem(f"{root}/1/1/7_Heretical_0.png", "Heretical", 1, str(mjsynth)),
        WordItem(f"{root}/1/2/8_banana_1.png", "apple", 2, str(mjsynth)),  # file-name word differs: the lexicon's
        WordItem(f"{root}/2/1/9_CAB_3.png", "CAB", 4, str(mjsynth)),
    ]


def test_mjsynth_lexicon_and_root_can_be_given(mjsynth, tmp_path):
    words = read_annotations(mjsynth, root="/elsewhere", lexicon=["x", "y", "z", "Cab"])
    assert [(item.path, item.text) for item in words] == [
        ("/elsewhere/1/1/7_Heretical_0.png", "x"), ("/elsewhere/1/2/8_banana_1.png", "y"),
        ("/elsewhere/2/1/9_CAB_3.png", "CAB")]
    (tmp_path / "words.txt").write_text("a\n\nb\r\nHERETICAL\n")
    assert read_lexicon(tmp_path / "words.txt") == ["a", "", "b", "HERETICAL"]  # blank lines keep their index
    (tmp_path / "one.txt").write_text("/abs/5_heretical_3.jpg 3\n")
    assert read_annotations(tmp_path / "one.txt", lexicon_path=tmp_path / "words.txt") == [
        WordItem("/abs/5_heretical_3.jpg", "heretical", 1, str(tmp_path / "one.txt"))]


@pytest.mark.parametrize("lines, line, match", [
    ("./a/1_apple_1.png 1\n./a/2_cab_4.png 4\n", 2, r"lexicon index 4 is outside the lexicon \(0..3, 4 words\)"),
    ("./a/2_cab_-1.png -1\n", 1, "lexicon index -1 is outside"),
    ("./a/1_apple_1.png 1\n\n./a/2_x_y.png one\n", 3, "lexicon index 'one' is not an integer"),
    ("./a/1_apple_1.png 1\n./a/2.png\tcab\n", 2, r"is `path<TAB>text` but the file's first line is MJSynth"),
    ("./a/1_apple_1.png 1\n./a/2.png\n", 2, "is not MJSynth `path index`"),
    ("./a/1_apple_1.png\n", 1, "neither MJSynth `path index` nor `path<TAB>text`"),
    ("a.png\tcab\nb.png cab\n", 2, "has no tab"),
    ("a.png\tcab\n\tcab\n", 2, "has an empty path"),
    ("a.png\tcab\nb.png\tca\tb\n", 2, "has a tab in its text"),
])
def test_bad_annotation_lines_are_named_file_and_line(tmp_path, lines, line, match):
    path = tmp_path / "annotation_val.txt"
    path.write_text(lines)
    (tmp_path / "lexicon.txt").write_text("\n".join(LEXICON) + "\n")
    raises_at(f"{path}:{line}", match, read_annotations, path)


def test_mjsynth_without_lexicon_names_the_missing_lexicon(tmp_path):
    path = tmp_path / "annotation_test.txt"
    path.write_text("\n./a/1_apple_1.png 1\n")
    raises_at(f"{path}:2", "lexicon.txt does not exist", read_annotations, path)


def test_undecodable_bytes_name_the_line(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_bytes("a.png\tcafé\n".encode() + b"b.png\tcaf\xe9\n")
    raises_at(f"{path}:2", "not UTF-8 text", read_annotations, path)
    raises_at(f"{path}:2", "not UTF-8 text", read_text_file, path)


def test_gt_text_keeps_spaces_and_case_and_ignores_a_bom(tmp_path):
    path = tmp_path / "gt.txt"
    path.write_text("\ufeffword_1.png\tNew York\n\n/abs/word_2.png\t Tab \n", encoding="utf-8")
    assert read_annotations(path) == [WordItem(f"{tmp_path}/word_1.png", "New York", 1, str(path)),
                                      WordItem("/abs/word_2.png", " Tab ", 3, str(path))]


def test_text_file_round_trip(tmp_path):
    rows = [("a/1.png", "Hello World"), ("/abs/2.png", ""), ("3.png", "naïve")]
    path = write_text_file(tmp_path / "out" / "predictions.txt", rows)
    assert path.read_text(encoding="utf-8") == "a/1.png\tHello World\n/abs/2.png\t\n3.png\tnaïve\n"
    assert read_text_file(path) == rows
    with pytest.raises(ValueError, match="tab or line break"):
        write_text_file(tmp_path / "bad.txt", [("a.png", "x\ty")])
    (tmp_path / "broken.txt").write_text("a.png\tok\nno tab here\n")
    raises_at(f"{tmp_path / 'broken.txt'}:2", "has no tab", read_text_file, tmp_path / "broken.txt")


def test_missing_annotation_file_names_the_expected_layout(tmp_path):
    error = raises_at(str(tmp_path / "annotation_train.txt"), "annotation file not found", open_word_set,
                      tmp_path / "annotation_train.txt", root=None, lexicon_path=None, size=(32, 128), channels=3,
                      skip_invalid=False, source="x")
    assert "annotation_<split>.txt + lexicon.txt, or a gt.txt of path<TAB>text lines" in error.fix


# --- dataset ------------------------------------------------------------------------------------------------------
def open_set(annotation_file: Path, channels: int = 3, skip_invalid: bool = False, size=(32, 128)):
    return open_word_set(annotation_file, root=None, lexicon_path=None, size=size, channels=channels,
                         skip_invalid=skip_invalid, source="test words")


def test_items_are_images_stretched_to_the_size_with_their_index(mjsynth):
    dataset = open_set(mjsynth)
    assert dataset.texts == ["Heretical", "apple", "CAB"] and len(dataset) == 3
    assert dataset.files[1] == f"{mjsynth.parent}/1/2/8_banana_1.png"
    image, index = dataset[1]
    assert index == 1 and image.dtype == torch.uint8 and image.shape == (3, 32, 128)
    assert image[:, 0, 0].tolist() == [0, 255, 0] and image[:, 31, 127].tolist() == [0, 255, 0]
    gray, _ = open_set(mjsynth, channels=1)[2]
    # ITU-R 601-2 luma of (5, 6, 7): (5 * 19595 + 6 * 38470 + 7 * 7471 + 32768) >> 16 = 6
    assert gray.shape == (1, 32, 128) and gray.unique().tolist() == [6]


def test_stretch_keeps_left_and_right_ends(tmp_path):
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, 10:] = 255  # left half black, right half white: a crop or pad would lose one end
    save_image(tmp_path / "w.png", array)
    (tmp_path / "gt.txt").write_text("w.png\tab\n")
    image, _ = open_set(tmp_path / "gt.txt", size=(8, 40))[0]
    assert image.shape == (3, 8, 40)
    assert image[:, :, :19].eq(0).all() and image[:, :, 21:].eq(255).all()


def test_collate_stacks_images_and_indices_with_their_labels(mjsynth):
    dataset = open_set(mjsynth)
    dataset.labels = [text.lower() for text in dataset.texts]
    images, indices, texts, labels = dataset.collate([dataset[2], dataset[0]])
    assert images.shape == (2, 3, 32, 128) and images.dtype == torch.uint8 and type(images) is torch.Tensor
    assert indices.tolist() == [2, 0] and indices.dtype == torch.int64
    assert texts == [dataset.texts[2], dataset.texts[0]] and labels == [t.lower() for t in texts]


def test_cache_equals_decoding_per_item_and_keeps_the_transform(mjsynth):
    dataset, cached = open_set(mjsynth), open_set(mjsynth).cache(workers=2)
    assert cached.in_memory_data and not dataset.in_memory_data
    assert cached.images.shape == (3, 3, 32, 128)
    for i in range(3):
        assert torch.equal(dataset[i][0], cached[i][0])
    cached.transform = lambda image: image // 2
    assert cached[0][0][:, 0, 0].tolist() == [100, 5, 5]
    assert cached.images[0, :, 0, 0].tolist() == [200, 10, 10]  # the cache is not altered
    cached.labels = ["heretical", "apple", "cab"]
    part = cached.subset([2, 0])
    assert part.texts == ["CAB", "Heretical"] and part.labels == ["cab", "heretical"] and part.in_memory_data
    assert part[1][0][:, 0, 0].tolist() == [100, 5, 5]


@pytest.fixture
def with_bad_images(mjsynth) -> Path:
    """The MJSynth layout plus a zero-byte image, a text file named .png and a truncated PNG (lines 5, 6, 7)."""
    root = mjsynth.parent
    (root / "3").mkdir()
    (root / "3/1_apple_1.png").write_bytes(b"")
    (root / "3/2_apple_1.png").write_bytes(b"not an image at all")
    save_image(root / "3/3_apple_1.png", constant(20, 60, (1, 2, 3)))
    data = (root / "3/3_apple_1.png").read_bytes()
    (root / "3/3_apple_1.png").write_bytes(data[: len(data) // 2])
    with mjsynth.open("a") as f:
        f.write("./3/1_apple_1.png 1\n./3/2_apple_1.png 1\n./3/3_apple_1.png 1\n")
    return mjsynth


def test_skip_invalid_leaves_out_unreadable_images_with_a_warning(with_bad_images, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = open_set(with_bad_images, skip_invalid=True)
    assert dataset.texts == ["Heretical", "apple", "CAB"] and dataset.num_skipped == 3
    assert "skipped 3 corrupt or unreadable image file(s)" in caplog.text
    assert all(f"3/{n}_apple_1.png" in caplog.text for n in (1, 2, 3))


def test_unreadable_image_is_named_when_read(with_bad_images):
    dataset = open_set(with_bad_images)
    assert len(dataset) == 6
    raises_at(dataset.files[3], "corrupt or unreadable", dataset.__getitem__, 3)
    raises_at(dataset.files[3], "corrupt or unreadable", open_set(with_bad_images).cache)


def test_only_unreadable_images_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "gt.txt").write_text("a.png\tab\n")
    raises_at(str(tmp_path / "gt.txt"), "no readable word images", open_set, tmp_path / "gt.txt", skip_invalid=True)
