"""Text-recognition pictures: CTC frame labels, alignment and saliency figures, captioned word crops."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import pixels_of, png
from PIL import Image

from cvtool.viz import text_plots as tp

GREEN, RED = (0x2C, 0xA0, 0x2C), (0xD6, 0x27, 0x28)




def word_probs(frames: list[str], charset: str, peak: float = 0.9) -> np.ndarray:
    """T x (1 + len(charset)) probabilities: each frame puts `peak` on its character ("" = blank), the rest evenly."""
    probs = np.full((len(frames), len(charset) + 1), (1 - peak) / len(charset))
    for f, char in enumerate(frames):
        probs[f, charset.index(char) + 1 if char else 0] = peak
    return probs


def test_frame_labels_hand_case_blank_is_empty_and_ties_go_to_the_lower_class():
    probs = np.array([[0.6, 0.3, 0.1],   # blank
                      [0.1, 0.8, 0.1],   # "a"
                      [0.2, 0.2, 0.6],   # "b"
                      [0.1, 0.45, 0.45],  # tie a/b: "a"
                      [0.4, 0.4, 0.2]])  # tie blank/a: blank
    assert tp.frame_labels(probs, "ab") == ["", "a", "b", "a", ""]
    with pytest.raises(ValueError, match="T x 3"):
        tp.frame_labels(probs[:, :2], "ab")


def test_shown_classes_keep_likely_rows_and_every_frames_best():
    probs = np.array([[0.97, 0.01, 0.01, 0.01],
                      [0.02, 0.90, 0.06, 0.02]])
    np.testing.assert_array_equal(tp.shown_classes(probs), [0, 1, 2])  # class 3 never above 0.05
    flat = np.full((1, 30), 0.03)
    flat[0, 7], flat[0, 8] = 0.04, 0.045  # nothing reaches 0.05; class 8 is the frame's best
    np.testing.assert_array_equal(tp.shown_classes(flat), [8])
    np.testing.assert_array_equal(tp.shown_classes(np.full((2, 25), 0.04)), [0])  # all flat: argmax 0 only


def test_alignment_figure_size_grows_with_shown_rows_and_title_colour_follows_the_target(tmp_path):
    charset = "abcdefghij"
    image = np.full((32, 128, 3), 255, np.uint8)
    frames = ["", "c", "", "a", "a", "", "b", ""] * 4
    probs = word_probs(frames, charset)  # others at 0.01: rows blank, a, b, c
    assert tp.frame_labels(probs, charset) == frames
    right = png(tp.alignment_figure(tmp_path / "right.png", image, probs, charset, "cabcabcabcab", "CAB-CABCABCAB"))
    # 10.4 in wide; 128 x 32 image: 2.5 in; heat map 0.6 + 0.17 in per row (4); 1.1 in titles; 100 dpi
    assert right.size == (1040, round(100 * (2.5 + 0.6 + 4 * 0.17 + 1.1)))
    assert pixels_of(right, GREEN) > 0 and pixels_of(right, RED) == 0
    wrong = png(tp.alignment_figure(tmp_path / "wrong.png", image, word_probs(frames, charset, 0.3), charset,
                                    "cab", "cat"))
    assert wrong.size == (1040, round(100 * (2.5 + 0.6 + 11 * 0.17 + 1.1)))  # others (1 - 0.3) / 10: all 11 rows
    assert pixels_of(wrong, RED) > 0 and pixels_of(wrong, GREEN) == 0
    untargeted = png(tp.alignment_figure(tmp_path / "plain.png", image[..., 0], probs, charset, "cab"))
    assert pixels_of(untargeted, RED) == pixels_of(untargeted, GREEN) == 0


def test_saliency_figure_stacks_image_and_map_and_resizes_the_map(tmp_path):
    image = np.zeros((32, 128, 3), np.uint8)
    saliency = np.zeros((8, 32))
    saliency[:, :4] = 1.0  # hot at the left end after resizing to 32 x 128
    figure = png(tp.saliency_figure(tmp_path / "s.png", image, saliency, "saliency of 'cab'"))
    assert figure.size == (800, round(100 * (2 * 2.0 + 1.2)))  # panels 8 in * 32 / 128 = 2 in high
    rgb = np.asarray(figure.convert("RGB")).astype(int)
    hot = (np.abs(rgb - [126, 127, 82]) <= 3).all(axis=2)  # half of inferno's top colour over the black image
    rows, columns = np.nonzero(hot)
    assert len(rows) > 5000 and columns.max() < 800 / 4 and rows.min() > figure.height / 2  # left end, lower panel


def test_overlay_word_upscales_small_crops_and_adds_a_caption_strip():
    crop = np.zeros((32, 100), np.uint8)
    crop[:, 50:] = 200
    picture = tp.overlay_word(crop, "cab", 0.93)
    assert picture.size == (200, 64 + tp.STRIP_HEIGHT)
    pixels = np.asarray(picture)
    assert (pixels[:64, :90] == 0).all() and (pixels[:64, 110:] == 200).all()  # the crop, 2x upscaled
    strip = pixels[64:]
    assert (strip[:, -30:] == 0).all() and (strip == 255).any()  # dark strip with white text at its left
    tall = tp.overlay_word(Image.new("RGB", (40, 80), (9, 9, 9)), "a much longer caption than the crop")
    assert tall.height == 80 + tp.STRIP_HEIGHT and tall.width > 200  # no upscaling; widened for the caption
    assert (np.asarray(tall)[:80, :40] == 9).all() and (np.asarray(tall)[:80, 40:] == 0).all()


def test_module_imports_without_torch(tmp_path):
    script = ("import sys\n"
              "sys.modules['torch'] = None\n"
              "import numpy as np\n"
              "from cvtool.viz import text_plots as tp\n"
              f"tp.alignment_figure({str(tmp_path / 'a.png')!r}, np.zeros((32, 64, 3), np.uint8),"
              " np.full((16, 3), 1 / 3), 'ab', 'a')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert png(tmp_path / "a.png").width == 1040
