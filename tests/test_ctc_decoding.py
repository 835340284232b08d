"""CTC decoding and loss: best-path collapse, lexicon-constrained decoding (Shi et al.), the loss's reduction."""

from __future__ import annotations

import math

import pytest
import torch

from cvtool.tasks.ctc_decoding import ctc_loss, frame_alignment, greedy_decode, lexicon_decode

LETTERS = "abcdefghijklmnopqrstuvwxyz"  # class i + 1; 0 is the blank
K = len(LETTERS) + 1


def encode(word: str) -> list[int]:
    return [LETTERS.index(c) + 1 for c in word]


def peaked(alignment: str, peak: float = 10.0) -> torch.Tensor:
    """T x K logits with `peak` at each frame's class ('-' is the blank) and 0 elsewhere."""
    logits = torch.zeros(len(alignment), K)
    for t, c in enumerate(alignment):
        logits[t, 0 if c == "-" else LETTERS.index(c) + 1] = peak
    return logits


def spell(classes: list[int]) -> str:
    return "".join(LETTERS[c - 1] for c in classes)


@pytest.mark.parametrize(("alignment", "word"), [
    ("-hh-e-ll-l-oo", "hello"),  # repeats merge; the blank between the two l runs keeps both
    ("hheelllloo", "helo"),  # without a blank between them, repeated letters merge into one
    ("l-l-l", "lll"),
    ("------", ""),
])
def test_greedy_decode_merges_repeats_and_drops_blanks(alignment, word):
    paths, _ = greedy_decode(peaked(alignment)[None])
    assert spell(paths[0]) == word


def test_greedy_confidence_is_the_probability_of_the_best_path():
    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.8, 0.1]], [[0.9, 0.05, 0.05], [0.9, 0.05, 0.05]]])
    paths, confidence = greedy_decode(probs.log())
    assert paths == [[1], []]
    assert confidence.dtype == torch.float32
    assert torch.allclose(confidence, torch.tensor([0.5 * 0.8, 0.9 * 0.9]))


def test_frame_alignment_is_the_best_class_per_frame_before_collapsing():
    assert frame_alignment(peaked("-aa-b")) == [0, 1, 1, 0, 2]


def near_miss() -> torch.Tensor:
    """'hallo' by best path, but the second frame gives 'e' nearly as much probability as 'a'."""
    logits = peaked("h-a-l-l-o", peak=5.0)
    logits[2, LETTERS.index("e") + 1] = 4.5
    return logits[None]


def test_lexicon_decode_picks_the_likeliest_word_near_a_wrong_best_path():
    paths, _ = greedy_decode(near_miss())
    assert spell(paths[0]) == "hallo"
    lexicon = [encode(w) for w in ("hullo", "hello", "world", "hall")]  # hullo, hello, hall: 1 edit away
    assert lexicon_decode(near_miss(), paths, lexicon) == [1]
    assert lexicon_decode(near_miss(), paths, lexicon, max_distance=0) == [1]  # nearest: the same three


def test_lexicon_decode_falls_back_to_the_nearest_word_by_edit_distance():
    logits = peaked("c-a-t")[None]
    paths, _ = greedy_decode(logits)
    lexicon = [encode(w) for w in ("cart", "dog", "tac")]  # 1, 3 and 2 edits from "cat"
    assert lexicon_decode(logits, paths, lexicon, max_distance=0) == [0]
    # all within reach: the likeliest wins ("cart" puts 'r' on one blank frame, "tac" two letters off their frames)
    assert lexicon_decode(logits, paths, lexicon, max_distance=3) == [0]
    assert lexicon_decode(logits, paths, lexicon[1:], max_distance=3) == [1]
    # ... and a word too long for the frames can never win (its likelihood is 0)
    assert lexicon_decode(logits, paths, [encode("cattle"), encode("dog")], max_distance=5) == [1]


def test_lexicon_decode_accepts_log_probabilities_as_logits():
    log_probs = near_miss().log_softmax(-1)
    paths, _ = greedy_decode(log_probs)
    assert lexicon_decode(log_probs, paths, [encode("hullo"), encode("hello")]) == [1]


def test_ctc_loss_of_uniform_scores_counts_the_alignments():
    # 3 frames, 3 classes, all equally likely (each path 1/27): "a" has 6 alignments (-a-, a--, --a, aa-, -aa,
    # aaa), "ab" 5 (ab-, a-b, -ab, aab, abb), "" only ---; each loss is divided by its target length (empty: 1)
    logits = torch.zeros(1, 3, 3)
    assert ctc_loss(logits, [[1]]).item() == pytest.approx(math.log(27 / 6), rel=1e-5)
    assert ctc_loss(logits, [[1, 2]]).item() == pytest.approx(math.log(27 / 5) / 2, rel=1e-5)
    assert ctc_loss(logits, [[]]).item() == pytest.approx(3 * math.log(3), rel=1e-5)
    both = ctc_loss(logits.expand(2, -1, -1), [[1], [1, 2]])
    assert both.item() == pytest.approx((math.log(27 / 6) + math.log(27 / 5) / 2) / 2, rel=1e-5)


def test_ctc_loss_gives_zero_and_no_gradient_for_a_target_too_long_for_the_frames():
    logits = torch.zeros(2, 3, 3, requires_grad=True)
    loss = ctc_loss(logits, [[1], [1, 1, 2]])  # "aab" needs 4 frames (a blank between the two a's)
    assert loss.item() == pytest.approx(math.log(27 / 6) / 2, rel=1e-5)  # the impossible sample counts as 0
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[1].abs().max() == 0


def test_ctc_loss_of_a_confident_correct_alignment_is_near_zero():
    logits = peaked("-hh-e-ll-l-oo", peak=30.0)[None].to(torch.bfloat16)
    loss = ctc_loss(logits, [encode("hello")])
    assert loss.dtype == torch.float32
    assert abs(loss.item()) < 1e-5
    assert ctc_loss(logits, [encode("hallo")]).item() > 5
