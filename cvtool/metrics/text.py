"""Text-recognition metrics with the semantics of MMOCR 1.x (WordMetric, CharMetric, OneMinusNEDMetric).

Word accuracy in three modes: "exact" (as written), "ignore_case" (both lower-cased) and "ignore_case_symbol" (lower-
cased, then every character MMOCR's `valid_symbol` pattern matches removed: all but a-z, 0-9, CJK U+4E00-U+9FA5
and, a quirk of that pattern, "^").
Character precision/recall and 1 - N.E.D. use the ignore_case_symbol texts. Unlike MMOCR there is no eps in the
denominators and no rounding: a ratio with nothing to count is None (JSON null).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from difflib import SequenceMatcher

import numpy as np
from rapidfuzz.distance import Levenshtein

from cvtool.utils import distributed as dist

from .base import ratio, to_numpy

MODES = ("exact", "ignore_case", "ignore_case_symbol")
# MMOCR's default pattern, kept verbatim for comparable numbers: after its leading "^" the other "^" are literal
# carets inside the negated class, so "^" is the one symbol it keeps.
SYMBOLS = re.compile("[^A-Z^a-z^0-9^\u4e00-\u9fa5]")


def normalise(text: str, mode: str) -> str:
    """`text` as the word-accuracy `mode` compares it: unchanged, lower-cased, or lower-cased without symbols."""
    if mode == "exact":
        return text
    if mode == "ignore_case":
        return text.lower()
    if mode == "ignore_case_symbol":
        return SYMBOLS.sub("", text.lower())
    raise ValueError(f"unknown text normalisation mode {mode!r}, expected one of {MODES}")


def true_positive_chars(prediction: str, target: str) -> int:
    """MMOCR's character true positives: the target characters in difflib's 'equal' blocks of (prediction, target)."""
    opcodes = SequenceMatcher(None, prediction, target).get_opcodes()
    return sum(e2 - s2 for op, _, _, s2, e2 in opcodes if op == "equal")


def normalised_edit_distance(prediction: str, target: str) -> float:
    """Levenshtein distance / the longer length of the ignore_case_symbol texts (0 when both are empty)."""
    return Levenshtein.normalized_distance(normalise(prediction, "ignore_case_symbol"),
                                           normalise(target, "ignore_case_symbol"))


def text_metrics(predictions: Sequence[str], targets: Sequence[str]) -> dict:
    """{"word_acc": {mode: fraction of samples whose normalised texts are equal}, "char_precision": true-positive
    characters / predicted characters, "char_recall": ... / target characters (both summed over the dataset, on
    ignore_case_symbol texts), "one_minus_ned": 1 - mean normalised_edit_distance, "num_samples"}."""
    n = len(targets)
    if len(predictions) != n:
        raise ValueError(f"{len(predictions)} predictions for {n} targets")
    correct = {mode: sum(normalise(p, mode) == normalise(t, mode) for p, t in zip(predictions, targets))
               for mode in MODES}
    pred_chars = gt_chars = true_positives = 0
    ned = 0.0
    for prediction, target in zip(predictions, targets):
        p, t = normalise(prediction, "ignore_case_symbol"), normalise(target, "ignore_case_symbol")
        pred_chars, gt_chars = pred_chars + len(p), gt_chars + len(t)
        true_positives += true_positive_chars(p, t)
        ned += Levenshtein.normalized_distance(p, t)
    return {"word_acc": {mode: ratio(correct[mode], n) for mode in MODES},
            "char_precision": ratio(true_positives, pred_chars), "char_recall": ratio(true_positives, gt_chars),
            "one_minus_ned": 1.0 - ned / n if n else None, "num_samples": n}


def empty_prediction_metrics(targets: Sequence[str]) -> dict:
    """`text_metrics` of a model that reads "" for every word (learned nothing): word accuracy counts only empty
    (normalised) targets, recall 0, precision None (nothing predicted), 1 - N.E.D. the share of empty targets."""
    return text_metrics([""] * len(targets), targets)


def character_edits(predictions: Iterable[str], targets: Iterable[str], top: int = 10) -> list[dict]:
    """The `top` most frequent character edits turning the ignore_case_symbol prediction into the target
    (Levenshtein editops): {"target": c, "prediction": c, "count"}, "" on the side a character is missing from
    (a missed target character, an extra predicted one). Ties in count ordered by (target, prediction)."""
    edits: Counter[tuple[str, str]] = Counter()
    for prediction, target in zip(predictions, targets):
        p, t = normalise(prediction, "ignore_case_symbol"), normalise(target, "ignore_case_symbol")
        for op, i, j in Levenshtein.editops(p, t):
            edits[(t[j] if op != "delete" else "", p[i] if op != "insert" else "")] += 1
    ranked = sorted(edits.items(), key=lambda item: (-item[1], item[0]))[:top]
    return [{"target": t, "prediction": p, "count": count} for (t, p), count in ranked]


class TextEvaluator:
    """`process(inputs, outputs)` with inputs["text"] (target texts as labelled) and inputs["index"] (item
    indices); the predicted texts are `decode(outputs)`, or `outputs` itself without `decode`. `evaluate` gathers
    all DDP ranks, orders by item index and returns `text_metrics`; afterwards `indices`, `predictions` and
    `targets` (item order) stay for `per_sample` and `confusions`."""

    def __init__(self, decode: Callable[[object], list[str]] | None = None):
        self.decode = decode
        self.indices: list[int] = []
        self.predictions: list[str] = []
        self.targets: list[str] = []
        self.reset()

    def reset(self) -> None:
        self.parts: list[tuple[list[int], list[str], list[str]]] = []

    def process(self, inputs: dict, outputs) -> None:
        self.add(self.decode(outputs) if self.decode is not None else outputs, inputs["text"], inputs["index"])

    def add(self, predictions: Sequence[str], targets: Sequence[str], indices=None) -> None:
        """Accumulate predicted and target texts; `indices` (item indices) default to the positions following the
        items added so far."""
        predictions, targets = list(predictions), list(targets)
        if not all(isinstance(text, str) for text in predictions):
            raise TypeError("predictions must be strings (give TextEvaluator a decode function for model outputs)")
        if indices is None:
            start = sum(len(part[0]) for part in self.parts)
            indices = range(start, start + len(targets))
        indices = to_numpy(indices, np.int64).reshape(-1).tolist()
        if not len(indices) == len(predictions) == len(targets):
            raise ValueError(f"{len(predictions)} predictions, {len(targets)} targets, {len(indices)} indices")
        self.parts.append((indices, predictions, targets))

    def protocol(self) -> str:
        count = len(self.predictions) or sum(len(part[0]) for part in self.parts)
        return (f"MMOCR 1.x recognition metrics over {count} words: word accuracy exact (texts as labelled), "
                "ignore_case (lower-cased) and ignore_case_symbol (lower-cased, all but a-z, 0-9, CJK and '^' "
                "removed); character precision/recall (difflib matching characters, dataset totals) and 1 - mean "
                "normalised Levenshtein distance on the ignore_case_symbol texts")

    def evaluate(self) -> dict:
        parts = [part for rank in dist.all_gather_objects(self.parts) for part in rank]
        indices = [i for part in parts for i in part[0]]
        if len(set(indices)) != len(indices):
            raise ValueError("some item indices were processed more than once")
        order = np.argsort(np.asarray(indices, dtype=np.int64), kind="stable")
        self.indices, self.predictions, self.targets = (
            [column[k] for k in order] for column in
            (indices, [p for part in parts for p in part[1]], [t for part in parts for t in part[2]]))
        return text_metrics(self.predictions, self.targets)

    def per_sample(self) -> list[dict]:
        """One row per evaluated item, in item order: {"index", "prediction", "target", "correct": {mode: bool},
        "ned": normalised edit distance}."""
        return [{"index": index, "prediction": p, "target": t,
                 "correct": {mode: normalise(p, mode) == normalise(t, mode) for mode in MODES},
                 "ned": normalised_edit_distance(p, t)}
                for index, p, t in zip(self.indices, self.predictions, self.targets)]

    def confusions(self, top: int = 10) -> list[dict]:
        """`character_edits` of the evaluated items."""
        return character_edits(self.predictions, self.targets, top)
