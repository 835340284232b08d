"""The character set of a text recognizer: case folding, unknown-character policy, CTC class encoding (no torch).

CTC class 0 is the blank; character `chars[i]` is class i + 1, so a CRNN has len(charset) + 1 outputs per frame.
Labels keep the case they were written with; the model's targets are the label after `Charset.fold`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from operator import eq
from typing import TYPE_CHECKING

from cvtool.errors import CvtoolError

if TYPE_CHECKING:
    from cvtool.data.word_annotations import WordItem

log = logging.getLogger("cvtool.data")

DEFAULT_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"
CASES = ("lower", "upper", "keep")
UNKNOWN_POLICIES = ("error", "drop", "skip")
# The config keys named in errors.
CHARSET_KEY, CASE_KEY, UNKNOWN_KEY, SIZE_KEY = "task.charset", "task.case", "task.unknown_chars", "dataset.image_size"
_UNLABELLABLE = "\t\n\r"  # a `path<TAB>text` line cannot hold these
_FOLDS = {"lower": str.lower, "upper": str.upper, "keep": str}


class Charset:
    """`chars` (distinct characters) as CTC classes 1..len; `case` is what `fold` does, `unknown` what `check` does
    with characters outside the set ("error", "drop" them, or "skip" the label)."""

    def __init__(self, chars: str, case: str = "lower", unknown: str = "error"):
        if case not in CASES:
            raise CvtoolError(f"unknown case folding {case!r}", where=CASE_KEY, fix=f"use one of: {', '.join(CASES)}")
        if unknown not in UNKNOWN_POLICIES:
            raise CvtoolError(f"unknown policy {unknown!r} for characters outside the charset", where=UNKNOWN_KEY,
                              fix=f"use one of: {', '.join(UNKNOWN_POLICIES)}")
        self.chars, self.case, self.unknown = chars, case, unknown
        self._fold = _FOLDS[case]
        _refuse_bad_chars(chars, self._fold, case)
        self._classes = {c: i + 1 for i, c in enumerate(chars)}
        self._delete_known = dict.fromkeys(map(ord, chars))  # str.translate table: what remains is unknown

    def __len__(self) -> int:
        return len(self.chars)

    def __repr__(self) -> str:
        return f"Charset({self.chars!r}, case={self.case!r}, unknown={self.unknown!r})"

    def fold(self, text: str) -> str:
        """`text` case-folded as the model sees it (no other change)."""
        return self._fold(text)

    def check(self, text: str, where: str) -> str | None:
        """The folded `text`, handling characters outside the set by the policy: "error" raises a CvtoolError
        naming `where` (e.g. "annotation_train.txt:12"), "drop" leaves them out, "skip" returns None."""
        folded = self._fold(text)
        unknown = folded.translate(self._delete_known)
        if not unknown:
            return folded
        if self.unknown == "skip":
            return None
        if self.unknown == "drop":
            return folded.translate(dict.fromkeys(map(ord, unknown)))
        shown = "".join(dict.fromkeys(unknown))
        raise CvtoolError(f"label {text!r} has characters outside {CHARSET_KEY}: {shown!r}", where=where,
                          fix=f"add them to {CHARSET_KEY}, or set {UNKNOWN_KEY}=drop|skip")

    def encode(self, text: str) -> list[int]:
        """Classes 1..len of the characters of an already checked (folded, known-only) `text`."""
        try:
            return [self._classes[c] for c in text]
        except KeyError as err:
            raise ValueError(f"{err.args[0]!r} of {text!r} is not in the charset: check() the text first") from None

    def decode(self, classes: Iterable[int]) -> str:
        """The text of classes 1..len; 0 (blank) is skipped. No CTC collapsing: see cvtool.tasks.ctc_decoding."""
        chars, size = self.chars, len(self.chars)
        out = []
        for c in classes:
            if not 0 <= c <= size:
                raise ValueError(f"class {c} is outside 0..{size} (blank + {size} characters)")
            if c:
                out.append(chars[c - 1])
        return "".join(out)


def ctc_frames_needed(targets: Sequence[int]) -> int:
    """Frames CTC needs to emit `targets`: one per character plus a blank between each pair of equal neighbours."""
    return len(targets) + sum(map(eq, targets, targets[1:]))


def check_labels(items: list[WordItem], charset: Charset, frames: int | None, *,
                 width: int | None = None) -> tuple[list[WordItem], list[list[int]], int]:
    """(kept items, their encoded targets, number skipped by unknown="skip"). Raises a CvtoolError naming the
    annotation file and line of the first label that is empty, has unknown characters (unknown="error"), or needs
    more than `frames` CTC frames (None: no limit; `width`, the image width, only words the message)."""
    kept, targets, skipped = [], [], []
    for item in items:
        where = f"{item.source}:{item.line}"
        text = charset.check(item.text, where)
        if text is None:
            skipped.append(where)
            continue
        if not text:
            after = " after dropping the characters outside the charset" if item.text else ""
            raise CvtoolError(f"the label of {item.path} is empty{after}", where=where,
                              fix="label the image or remove its line")
        target = charset.encode(text)
        if frames is not None and ctc_frames_needed(target) > frames:
            raise _too_long(item.text, target, frames, width, where)
        kept.append(item)
        targets.append(target)
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        log.warning("skipped %d label(s) with characters outside %s (%s=skip): %s", len(skipped), CHARSET_KEY,
                    UNKNOWN_KEY, shown)
    return kept, targets, len(skipped)


def _too_long(text: str, target: list[int], frames: int, width: int | None, where: str) -> CvtoolError:
    needed = ctc_frames_needed(target)
    repeats = needed - len(target)
    images = f" for images {width} px wide" if width is not None else ""
    return CvtoolError(f"label {text!r} needs {needed} CTC frames ({len(target)} characters + {repeats} repeats) but "
                       f"the model emits {frames}{images}", where=where,
                       fix=f"widen {SIZE_KEY} or drop such labels")


def _refuse_bad_chars(chars: str, fold, case: str) -> None:
    """Refuse an empty charset, repeated characters, and characters no folded label can contain."""
    if not isinstance(chars, str):
        raise CvtoolError(f"the charset must be a string of characters, not {type(chars).__name__} {chars!r}",
                          where=CHARSET_KEY, fix="quote it (YAML reads unquoted digits as a number)")
    if not chars:
        raise CvtoolError("the charset is empty", where=CHARSET_KEY,
                          fix=f"list the characters to recognize, e.g. {DEFAULT_CHARS}")
    repeated = "".join(c for c in dict.fromkeys(chars) if chars.count(c) > 1)
    if repeated:
        raise CvtoolError(f"the charset repeats {repeated!r}", where=CHARSET_KEY, fix="list each character once")
    unlabellable = [c for c in chars if c in _UNLABELLABLE]
    if unlabellable:
        raise CvtoolError(f"the charset holds control characters {''.join(unlabellable)!r} no label can contain",
                          where=CHARSET_KEY, fix="remove them")
    unreachable = "".join(c for c in chars if fold(c) != c)
    if unreachable:
        raise CvtoolError(f"{CASE_KEY}={case} folds every label, so the charset's {unreachable!r} never occur",
                          where=CHARSET_KEY, fix=f"remove them, or set {CASE_KEY}=keep to tell cases apart")
