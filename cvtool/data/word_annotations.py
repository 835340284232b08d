"""Word image annotations (no torch): MJSynth `path index` lines into a lexicon, and `path<TAB>text` text files.

MJSynth (Synth90k): `annotation_<split>.txt` lines `./2911/6/77_Heretical_35885.jpg 35885`, the number a 0-based
index into `lexicon.txt` (one word per line) next to it; the file name repeats the word in the case it was rendered.
gt.txt form: `path<TAB>text` (the text may contain spaces, never tabs). Paths are relative to the annotation file's
directory unless absolute. Every malformed line is refused naming the file and line.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write_text

LAYOUT = "MJSynth layout: annotation_<split>.txt + lexicon.txt, or a gt.txt of path<TAB>text lines"
LEXICON = "lexicon.txt"
_CONTROL = "\t\n\r"  # never inside a path or text of a `path<TAB>text` line
_GT_FIX = "write one `path<TAB>text` line per image (a single tab; the text may contain spaces)"
_MJSYNTH_FIX = "write one `path index` line per image (index: 0-based line of the lexicon)"


@dataclass(frozen=True, slots=True)
class WordItem:
    """One word image: its file (absolute or root-joined), its label as written, the 1-based line and the
    annotation file it came from (errors name `source:line`)."""

    path: str
    text: str
    line: int
    source: str


def read_lexicon(path: str | Path) -> list[str]:
    """The words of a lexicon file, one per line: index = line number - 1 (blank lines keep their place)."""
    path = Path(path)
    if not path.is_file():
        raise CvtoolError("lexicon not found", where=str(path), fix="MJSynth's lexicon.txt: one word per line")
    return [line.strip() for line, _ in _lines(path, blank=True)]


def read_annotations(path: str | Path, root: str | Path | None = None, lexicon: list[str] | None = None,
                     lexicon_path: str | Path | None = None) -> list[WordItem]:
    """The word items of an MJSynth annotation file or a `path<TAB>text` file (the form of the first non-blank
    line, which every line must share). MJSynth text: the lexicon word (`lexicon`, else read from `lexicon_path`,
    default lexicon.txt next to the file) in the case of the file-name word when the two are equal ignoring case.
    Paths are joined to `root` (default: the file's directory)."""
    path = Path(path)
    if not path.is_file():
        raise CvtoolError("annotation file not found", where=str(path), fix=f"expected the {LAYOUT}")
    lines = _lines(path)
    first = next(lines, None)
    if first is None:
        return []
    base, source = str(path.parent if root is None else root), str(path)
    if "\t" in first[0]:
        return list(_gt_items(chain([first], lines), base, source))
    if len(first[0].split()) != 2:
        raise CvtoolError(f"line {first[0]!r} is neither MJSynth `path index` nor `path<TAB>text`",
                          where=f"{path}:{first[1]}", fix=f"expected the {LAYOUT}")
    if lexicon is None:
        lexicon = _mjsynth_lexicon(Path(lexicon_path) if lexicon_path else path.parent / LEXICON, f"{path}:{first[1]}")
    return _mjsynth_items(chain([first], lines), base, source, lexicon)


def write_text_file(path: str | Path, rows: Iterable[tuple[str, str]]) -> Path:
    """Write `path<TAB>text` lines (UTF-8) atomically; paths are written as given."""
    lines = []
    for file, text in rows:
        if any(c in _CONTROL for c in file + text):
            raise ValueError(f"a tab or line break in {file!r} / {text!r} cannot be written as `path<TAB>text`")
        lines.append(f"{file}\t{text}\n")
    return atomic_write_text(path, "".join(lines))


def read_text_file(path: str | Path) -> list[tuple[str, str]]:
    """The (path as written, text) rows of a `path<TAB>text` file; malformed lines are named file:line."""
    path = Path(path)
    if not path.is_file():
        raise CvtoolError("text file not found", where=str(path), fix="expected `path<TAB>text` lines")
    return [_gt_fields(line, path, n) for line, n in _lines(path)]


# --- parsing ------------------------------------------------------------------------------------------------------

def _lines(path: Path, blank: bool = False) -> Iterator[tuple[str, int]]:
    """(line without its line break, 1-based number) of every line (`blank`) or of those that are not blank,
    decoded from UTF-8 (a BOM ignored)."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise CvtoolError(f"not UTF-8 text (byte {err.start + 1} of the line)", where=f"{path}:{n}",
                                  fix="save the file as UTF-8") from None
            if blank or (line and not line.isspace()):
                yield line, n


def _gt_fields(line: str, path: Path | str, n: int) -> tuple[str, str]:
    file, tab, text = line.partition("\t")
    if not tab or not file.strip() or "\t" in text:
        problem = "no tab" if not tab else "an empty path" if not file.strip() else "a tab in its text"
        raise CvtoolError(f"line {line!r} has {problem}", where=f"{path}:{n}", fix=_GT_FIX)
    return file.strip(), text


def _gt_items(lines: Iterator[tuple[str, int]], base: str, source: str) -> Iterator[WordItem]:
    prefix = os.path.join(base, "")
    for line, n in lines:
        file, text = _gt_fields(line, source, n)
        yield WordItem(_joined(prefix, file), text, n, source)


def _mjsynth_lexicon(path: Path, where: str) -> list[str]:
    if not path.is_file():
        raise CvtoolError(f"MJSynth `path index` lines index a lexicon, but {path} does not exist", where=where,
                          fix=f"put the lexicon ({LEXICON}, one word per line) there, or give its path")
    return read_lexicon(path)


def _mjsynth_items(lines: Iterator[tuple[str, int]], base: str, source: str, lexicon: list[str]) -> list[WordItem]:
    """Items of `path index` lines; one loop without per-line regexes or Path objects (MJSynth train: 7.2 M lines)."""
    items, prefix, size = [], os.path.join(base, ""), len(lexicon)
    for line, n in lines:
        fields = line.split()
        if "\t" in line:
            raise _mjsynth_error(f"line {line!r} is `path<TAB>text` but the file's first line is MJSynth "
                                 "`path index`", source, n)
        if len(fields) != 2:
            raise _mjsynth_error(f"line {line!r} is not MJSynth `path index`", source, n)
        file, index = fields
        try:
            i = int(index)
        except ValueError:
            raise _mjsynth_error(f"lexicon index {index!r} is not an integer", source, n) from None
        if not 0 <= i < size:
            raise _mjsynth_error(f"lexicon index {i} is outside the lexicon (0..{size - 1}, {size} words)", source, n)
        if file.startswith("./"):
            file = file[2:]
        items.append(WordItem(_joined(prefix, file), _rendered_case(file, lexicon[i]), n, source))
    return items


def _joined(prefix: str, file: str) -> str:
    """`file` under `prefix` (a directory ending in a separator) unless absolute; cheaper than os.path.join."""
    return file if os.path.isabs(file) else prefix + file


def _rendered_case(file: str, word: str) -> str:
    """`word` in the case of the file name's word (`77_Heretical_35885.jpg`) when the two agree ignoring case."""
    stem = file.rpartition("/")[2].rpartition(".")[0]
    named = stem.partition("_")[2].rpartition("_")[0]
    return named if named != word and named.lower() == word.lower() else word


def _mjsynth_error(what: str, source: str, n: int) -> CvtoolError:
    return CvtoolError(what, where=f"{source}:{n}", fix=_MJSYNTH_FIX)
