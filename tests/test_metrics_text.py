"""Text-recognition metrics (MMOCR 1.x semantics): hand cases, item order, DDP gather, and MMOCR's own formulas."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np
import pytest
from rapidfuzz.distance import Levenshtein

from cvtool.metrics import text as tm

# pred, gt: exact / ignore_case / ignore_case_symbol equal?  ics texts          tp  pred gt  NED
HAND = [("hel1o!", "Hello"),  # no / no / no      "hel1o" vs "hello"   hel+o = 4  5  5  1/5
        ("WORLD", "World"),   # no / yes / yes    "world" vs "world"   5          5  5  0
        ("it's", "its"),      # no / no / yes     "its" vs "its"       3          3  3  0
        ("cat", "cat"),       # yes / yes / yes                         3          3  3  0
        ("", "Dog.")]         # no / no / no      "" vs "dog"          0          0  3  1


def test_hand_case_every_mode_and_character_counts():
    metrics = tm.text_metrics(*zip(*HAND))
    assert metrics["word_acc"] == {"exact": 1 / 5, "ignore_case": 2 / 5, "ignore_case_symbol": 3 / 5}
    assert metrics["char_precision"] == 15 / 16  # tp 4+5+3+3+0 over predicted 5+5+3+3+0
    assert metrics["char_recall"] == 15 / 19  # over target 5+5+3+3+3
    assert metrics["one_minus_ned"] == pytest.approx(1 - (0.2 + 1) / 5, abs=1e-15)
    assert metrics["num_samples"] == 5
    assert all(type(v) is float for v in [*metrics["word_acc"].values(), metrics["char_precision"]])


def test_normalise_keeps_mmocr_alphabet_and_its_caret_quirk():
    assert tm.normalise("Café-Bar 9!", "exact") == "Café-Bar 9!"
    assert tm.normalise("Café-Bar 9!", "ignore_case") == "café-bar 9!"
    assert tm.normalise("Café-Bar 9!", "ignore_case_symbol") == "cafbar9"  # é, "-", " ", "!" removed
    assert tm.normalise("中文, OK", "ignore_case_symbol") == "中文ok"
    assert tm.normalise("A^B", "ignore_case_symbol") == "a^b"  # MMOCR's pattern lists "^" among kept characters
    with pytest.raises(ValueError, match="unknown"):
        tm.normalise("a", "lower")


def test_true_positives_follow_difflib_blocks_not_the_longest_common_subsequence():
    # difflib takes the first longest block: "c" (pred[0], gt[2]); nothing is left before it in pred or after it
    # in gt, so tp = 1 although "bc" is a common subsequence of length 2.
    assert tm.true_positive_chars("cbc", "bac") == 1
    assert tm.true_positive_chars("hel1o", "hello") == 4
    metrics = tm.text_metrics(["cbc"], ["bac"])
    assert metrics["char_precision"] == metrics["char_recall"] == 1 / 3


def test_edit_distance_with_empty_strings():
    assert tm.normalised_edit_distance("", "") == 0.0
    assert tm.normalised_edit_distance("!!", "") == 0.0  # both empty once symbols go
    assert tm.normalised_edit_distance("", "ab") == 1.0
    assert tm.normalised_edit_distance("abc", "ABCD") == 0.25
    metrics = tm.text_metrics(["", "!!", ""], ["", "", "ab"])
    assert metrics["word_acc"] == {"exact": 1 / 3, "ignore_case": 1 / 3, "ignore_case_symbol": 2 / 3}
    assert metrics["one_minus_ned"] == pytest.approx(2 / 3, abs=1e-15)
    assert metrics["char_precision"] is None and metrics["char_recall"] == 0.0  # nothing predicted; 0 of 2 found


def test_empty_evaluation_is_null_and_empty_prediction_baseline():
    assert tm.text_metrics([], []) == {"word_acc": dict.fromkeys(tm.MODES), "char_precision": None,
                                       "char_recall": None, "one_minus_ned": None, "num_samples": 0}
    baseline = tm.empty_prediction_metrics(["ab", "", "!"])
    # "" equals the empty target in every mode and "!" once symbols go; NED 1, 0, 0
    assert baseline["word_acc"] == {"exact": 1 / 3, "ignore_case": 1 / 3, "ignore_case_symbol": 2 / 3}
    assert baseline["char_precision"] is None and baseline["char_recall"] == 0.0
    assert baseline["one_minus_ned"] == pytest.approx(2 / 3, abs=1e-15)
    with pytest.raises(ValueError, match="2 predictions for 1 targets"):
        tm.text_metrics(["a", "b"], ["a"])


def test_evaluator_orders_shuffled_batches_by_item_index():
    evaluator = tm.TextEvaluator(decode=lambda outputs: [word.upper() for word in outputs])
    evaluator.process({"text": ["cat", "Hello"], "index": np.array([3, 0])}, ["cat", "hel1o"])
    evaluator.process({"text": ["its", "World"], "index": [2, 1]}, ["it's", "world"])
    metrics = evaluator.evaluate()
    assert evaluator.indices == [0, 1, 2, 3]
    assert evaluator.predictions == ["HEL1O", "WORLD", "IT'S", "CAT"]
    assert evaluator.targets == ["Hello", "World", "its", "cat"]
    assert metrics["word_acc"] == {"exact": 0.0, "ignore_case": 2 / 4, "ignore_case_symbol": 3 / 4}
    rows = evaluator.per_sample()
    assert [r["index"] for r in rows] == [0, 1, 2, 3] and rows[0]["prediction"] == "HEL1O"
    assert rows[2]["correct"] == {"exact": False, "ignore_case": False, "ignore_case_symbol": True}
    assert [r["ned"] for r in rows] == [0.2, 0.0, 0.0, 0.0]
    assert "4 words" in evaluator.protocol()
    evaluator.reset()
    assert evaluator.evaluate()["num_samples"] == 0


def test_add_defaults_to_following_indices_and_refuses_bad_input():
    evaluator = tm.TextEvaluator()
    evaluator.add(["a", "b"], ["a", "c"])
    evaluator.add(["d"], ["d"])
    evaluator.add(["z"], ["y"], indices=[-1])
    evaluator.evaluate()
    assert evaluator.indices == [-1, 0, 1, 2] and evaluator.predictions == ["z", "a", "b", "d"]
    with pytest.raises(TypeError, match="decode"):
        evaluator.process({"text": ["a"], "index": [0]}, np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="1 predictions, 1 targets, 2 indices"):
        evaluator.add(["a"], ["a"], indices=[0, 1])
    evaluator.add(["x"], ["x"], indices=[0])
    with pytest.raises(ValueError, match="more than once"):
        evaluator.evaluate()


def test_evaluate_gathers_every_rank(monkeypatch):
    other_rank = [([1], ["b"], ["B"])]
    monkeypatch.setattr(tm.dist, "all_gather_objects", lambda parts: [parts, other_rank])
    evaluator = tm.TextEvaluator()
    evaluator.add(["a", "x"], ["a", "c"], indices=[0, 2])
    metrics = evaluator.evaluate()
    assert evaluator.targets == ["a", "B", "c"]
    assert metrics["word_acc"]["exact"] == 1 / 3 and metrics["word_acc"]["ignore_case"] == 2 / 3


def test_confusions_count_substitutions_missed_and_extra_characters():
    evaluator = tm.TextEvaluator()
    # hello->hel1o: l read as 1; hello->helo: one l missed; cat->caat: extra a; cab->cat twice: t read as b
    evaluator.add(["hel1o", "helo", "caat", "cab", "CAB"], ["hello", "hello", "cat", "cat", "cat"])
    evaluator.evaluate()
    assert evaluator.confusions() == [{"target": "t", "prediction": "b", "count": 2},
                                      {"target": "", "prediction": "a", "count": 1},
                                      {"target": "l", "prediction": "", "count": 1},
                                      {"target": "l", "prediction": "1", "count": 1}]
    assert evaluator.confusions(top=1) == [{"target": "t", "prediction": "b", "count": 2}]


# --- MMOCR's formulas, restated from mmocr/evaluation/metrics/recog_metric.py (eps and rounding left out) ---------
MMOCR_SYMBOL = re.compile("[^A-Z^a-z^0-9^\u4e00-\u9fa5]")


def mmocr_metrics(preds: list[str], gts: list[str]) -> dict:
    word = {"exact": 0, "ignore_case": 0, "ignore_case_symbol": 0}
    gt_chars = pred_chars = tp = 0
    ned = 0.0
    for pred, gt in zip(preds, gts):
        p_low, g_low = pred.lower(), gt.lower()
        p_ign, g_ign = MMOCR_SYMBOL.sub("", p_low), MMOCR_SYMBOL.sub("", g_low)
        word["exact"] += pred == gt
        word["ignore_case"] += p_low == g_low
        word["ignore_case_symbol"] += p_ign == g_ign
        gt_chars, pred_chars = gt_chars + len(g_ign), pred_chars + len(p_ign)
        for opt, _, _, s2, e2 in SequenceMatcher(None, p_ign, g_ign).get_opcodes():
            if opt == "equal":
                tp += e2 - s2
        ned += Levenshtein.normalized_distance(p_ign, g_ign)
    n = len(gts)
    return {"word_acc": {k: 1.0 * v / n for k, v in word.items()}, "char_precision": 1.0 * tp / pred_chars,
            "char_recall": 1.0 * tp / gt_chars, "one_minus_ned": 1.0 - ned / max(1, n), "num_samples": n}


def random_pairs(count: int, seed: int) -> tuple[list[str], list[str]]:
    """Targets from a mixed alphabet (cases, digits, symbols, "^", accents, CJK) and predictions derived from
    them by case changes and random character edits, so every mode has hits and misses."""
    rng = random.Random(seed)
    alphabet = "abcXYZ019 -!.'^é中文"
    gts, preds = [], []
    for _ in range(count):
        gt = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 9)))
        pred = rng.choice([gt, gt.upper(), gt.swapcase(), gt.replace("-", "")])
        for _ in range(rng.choice([0, 0, 1, 2, 4])):
            at = rng.randint(0, len(pred))
            pred = pred[:at] + rng.choice(["", rng.choice(alphabet)]) + pred[at + rng.randint(0, 1):]
        gts.append(gt)
        preds.append(pred)
    return preds, gts


def test_equals_mmocr_formulas_on_random_strings():
    preds, gts = random_pairs(200, seed=7)
    ours, reference = tm.text_metrics(preds, gts), mmocr_metrics(preds, gts)
    for mode in tm.MODES:
        assert 0.1 < reference["word_acc"][mode] < 0.9  # the sample exercises hits and misses
        assert ours["word_acc"][mode] == pytest.approx(reference["word_acc"][mode], abs=1e-12)
    for key in ("char_precision", "char_recall", "one_minus_ned"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-12)
    assert ours["num_samples"] == 200


def test_imports_and_evaluates_without_torch(tmp_path):
    script = ("import sys\n"
              "sys.modules['torch'] = None\n"
              "from cvtool.metrics.text import text_metrics, empty_prediction_metrics\n"
              "print(text_metrics(['WORLD'], ['World'])['word_acc']['ignore_case'],"
              " empty_prediction_metrics(['a'])['char_recall'])\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1.0", "0.0"]
    # the evaluator's DDP gather asks cvtool.utils.distributed, which must not import torch either
    poison = tmp_path / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('torch imported by cvtool.metrics.text')\n")
    script = ("from cvtool.metrics.text import TextEvaluator\n"
              "e = TextEvaluator()\n"
              "e.add(['b', 'a'], ['b', 'A'], indices=[1, 0])\n"
              "print(e.evaluate()['word_acc']['exact'], e.predictions)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison.parent), str(Path.cwd())])}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0.5", "['a',", "'b']"]
