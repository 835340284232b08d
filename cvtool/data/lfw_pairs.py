"""LFW verification pairs files (`pairs.txt`): reading with line-precise errors, writing, and generating new ones.

Format: a header `F N` (F folds of N matched + N mismatched pairs; LFW View 2: `10 300`) or `N` (one fold; LFW
View 1 `pairsDevTrain.txt`), then per fold in order N matched lines `name n1 n2` and N mismatched lines
`name1 n1 name2 n2`, whitespace separated (LFW uses tabs). Image numbers start at 1 and name
`<name>/<name>_%04d.jpg`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write_text


@dataclass(frozen=True)
class Pair:
    """One line of a pairs file: two images as (identity, image number), whether they show the same person, the
    0-based fold (block of the file) and the 1-based line number in the file (0 when generated)."""

    left: tuple[str, int]
    right: tuple[str, int]
    same: bool
    fold: int
    line: int = 0


def lfw_file_name(identity: str, number: int) -> str:
    """The image's path under the dataset root in the LFW layout: "name/name_0005.jpg"."""
    return f"{identity}/{identity}_{number:04d}.jpg"


# --- reading ------------------------------------------------------------------------------------------------------
def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(1-based line number, whitespace-separated fields) of every non-blank line."""
    if not path.is_file():
        raise CvtoolError("pairs file not found", where=str(path),
                          fix="check the path (LFW's pairs.txt or pairsDevTrain.txt), or leave it unset to generate "
                              "pairs")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CvtoolError(f"not a UTF-8 text file (byte {err.start})", where=str(path),
                          fix="pass an LFW pairs text file") from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def _header(path: Path, lines: list[tuple[int, list[str]]]) -> tuple[int, int]:
    if not lines:
        raise CvtoolError("empty pairs file", where=str(path), fix="the first line must be `folds pairs_per_half_fold`")
    n, fields = lines[0]
    values = [int(f) for f in fields if _is_int(f)]
    if len(fields) not in (1, 2) or len(values) != len(fields) or min(values) < 1:
        raise CvtoolError(f"header {' '.join(fields)!r} is not 1 or 2 positive integers", where=f"{path}:{n}",
                          fix="the first line must be `F N` (F folds of N matched + N mismatched lines, LFW's "
                              "`10 300`) or `N` (one fold)")
    return (1, values[0]) if len(values) == 1 else (values[0], values[1])


def _is_int(field: str) -> bool:
    return field.isascii() and field.isdigit()


def _number(field: str, where: str) -> int:
    if not _is_int(field) or int(field) < 1:
        raise CvtoolError(f"image number {field!r} is not an integer >= 1", where=where,
                          fix="image numbers count from 1 (name_0001.jpg is 1)")
    return int(field)


def _parse_pair(fields: list[str], where: str, fold: int, line: int) -> Pair:
    if len(fields) == 3:
        name, a, b = fields
        return Pair((name, _number(a, where)), (name, _number(b, where)), True, fold, line)
    if len(fields) == 4:
        if fields[0] == fields[2]:
            raise CvtoolError(f"mismatched pair names {fields[0]!r} twice", where=where,
                              fix="a mismatched line `name1 n1 name2 n2` needs two different identities")
        return Pair((fields[0], _number(fields[1], where)), (fields[2], _number(fields[3], where)), False, fold, line)
    raise CvtoolError(f"{len(fields)} fields instead of 3 (`name n1 n2`) or 4 (`name1 n1 name2 n2`)", where=where,
                      fix="write one pair per line, fields separated by tabs or spaces")


def _check_position(pair: Pair, k: int, folds: int, per_fold: int, header: str, where: str) -> None:
    """Refuse the k-th (0-based) pair line when the header puts a pair of the other kind, or none, there."""
    if k >= 2 * folds * per_fold:
        raise CvtoolError(f"more pair lines than the {2 * folds * per_fold} the header `{header}` implies",
                          where=where, fix="the header must say how many folds and pairs the file holds "
                                           "(`F N` for F blocks of N matched + N mismatched lines)")
    fold, slot = divmod(k, 2 * per_fold)
    if pair.same != (slot < per_fold):
        expected, got = ("matched", "mismatched") if slot < per_fold else ("mismatched", "matched")
        raise CvtoolError(f"a {got} line where the header `{header}` puts fold {fold + 1}'s {expected} pair "
                          f"{slot % per_fold + 1} of {per_fold}", where=where,
                          fix=f"each fold is {per_fold} matched lines (`name n1 n2`) then {per_fold} mismatched lines "
                              "(`name1 n1 name2 n2`): fix the header or the lines")


def _check_images(pair: Pair, images: Mapping[str, Collection[int]], where: str) -> None:
    for name, number in (pair.left, pair.right):
        if name not in images:
            raise CvtoolError(f"identity {name!r} is not in the dataset", where=where,
                              fix=f"the LFW layout needs the folder {name}/ under the dataset root; use the pairs "
                                  "file of this dataset")
        if number not in images[name]:
            raise CvtoolError(f"image {lfw_file_name(name, number)} is not in the dataset", where=where,
                              fix="use the pairs file of this dataset (image numbers count from 1)")


def read_pairs(path: str | Path,
               images: Mapping[str, Collection[int]] | None = None) -> tuple[list[Pair], int, int]:
    """(pairs in file order, folds, pairs per half-fold) of an LFW pairs file. With `images` (identity -> image
    numbers present), every named image must exist. Errors name the file and line."""
    path = Path(path)
    lines = _read_lines(path)
    folds, per_fold = _header(path, lines)
    header = " ".join(lines[0][1])
    pairs = []
    for k, (n, fields) in enumerate(lines[1:]):
        where = f"{path}:{n}"
        pair = _parse_pair(fields, where, k // (2 * per_fold), n)
        _check_position(pair, k, folds, per_fold, header, where)
        if images is not None:
            _check_images(pair, images, where)
        pairs.append(pair)
    if len(pairs) != 2 * folds * per_fold:
        raise CvtoolError(f"the header `{header}` implies {2 * folds * per_fold} pair lines ({folds} folds x "
                          f"{per_fold} matched + {per_fold} mismatched) but the file has {len(pairs)}",
                          where=f"{path}:{lines[0][0]}", fix="fix the header or add the missing lines")
    return pairs, folds, per_fold


# --- writing ------------------------------------------------------------------------------------------------------
def _pair_line(pair: Pair) -> str:
    (name, a), (other, b) = pair.left, pair.right
    return f"{name}\t{a}\t{b}" if pair.same else f"{name}\t{a}\t{other}\t{b}"


def write_pairs(path: str | Path, pairs: Sequence[Pair], folds: int, per_fold: int) -> Path:
    """Write `pairs` (in the file order: per fold `per_fold` matched then `per_fold` mismatched) as an LFW pairs
    file with header `folds\\tper_fold`, atomically."""
    layout = [(k // (2 * per_fold), k % (2 * per_fold) < per_fold) for k in range(2 * folds * per_fold)]
    if [(p.fold, p.same) for p in pairs] != layout:
        raise ValueError(f"pairs are not {folds} folds of {per_fold} matched then {per_fold} mismatched pairs")
    return atomic_write_text(path, "".join(f"{line}\n" for line in [f"{folds}\t{per_fold}", *map(_pair_line, pairs)]))


# --- generating ---------------------------------------------------------------------------------------------------
def _split(images: dict[str, list[int]], folds: int, rng: np.random.Generator) -> list[list[str]]:
    """Identities (with an image) dealt into `folds` disjoint sorted groups: shuffled identities with >= 2 images
    first, then those with one, so that every group gets its share of the matched-pair material."""
    multi = [n for n in sorted(images) if len(images[n]) >= 2]
    single = [n for n in sorted(images) if len(images[n]) == 1]
    order = [multi[i] for i in rng.permutation(len(multi))] + [single[i] for i in rng.permutation(len(single))]
    return [sorted(order[f::folds]) for f in range(folds)]


def _unrank_pairs(t: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The pairs (a, b), a < b, of range(n) at indices `t` of their lexicographic order."""
    before = np.concatenate([[0], np.cumsum(np.arange(n - 1, 0, -1))])  # pairs whose first element is < a
    a = np.searchsorted(before, t, side="right") - 1
    return a, t - before[a] + a + 1


def _balanced_draw(units: int, capacity: Callable[[np.ndarray], np.ndarray], count: int,
                   rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
    """`count` distinct (unit, item) draws spread over `units` as evenly as their capacities (items per unit,
    `capacity(unit indices)`) allow: a random selection of at most `count` units, in random order, takes one
    item each per round. Returns (unit, sorted random item indices) per selected unit."""
    order = rng.choice(units, size=min(count, units), replace=False)
    capacities = capacity(order)
    takes = np.zeros(len(order), dtype=np.int64)
    while (left := count - int(takes.sum())) > 0:
        open_units = np.flatnonzero(takes < capacities)[:left]
        if not open_units.size:
            raise ValueError(f"the units hold {int(capacities.sum())} items, {count} requested")
        takes[open_units] += 1
    return [(int(unit), np.sort(rng.choice(int(cap), size=int(k), replace=False)))
            for unit, cap, k in zip(order, capacities, takes)]


def _matched(group: list[str], images: dict[str, list[int]], count: int, fold: int,
             rng: np.random.Generator) -> list[Pair]:
    names = [n for n in group if len(images[n]) >= 2]
    sizes = np.array([len(images[n]) for n in names], dtype=np.int64)
    pairs = []
    for unit, items in _balanced_draw(len(names), lambda u: sizes[u] * (sizes[u] - 1) // 2, count, rng):
        name, numbers = names[unit], images[names[unit]]
        pairs += [Pair((name, numbers[a]), (name, numbers[b]), True, fold)
                  for a, b in zip(*_unrank_pairs(items, len(numbers)))]
    return pairs


def _mismatched(group: list[str], images: dict[str, list[int]], count: int, fold: int,
                rng: np.random.Generator) -> list[Pair]:
    """Units are the identity pairs (u, v), u < v, of the group; unit items the image pairs of u x v."""
    sizes = np.array([len(images[n]) for n in group], dtype=np.int64)

    def capacity(units: np.ndarray) -> np.ndarray:
        u, v = _unrank_pairs(units, len(group))
        return sizes[u] * sizes[v]

    draws = _balanced_draw(math.comb(len(group), 2), capacity, count, rng)
    pairs = []
    for (u, v), (_, items) in zip(zip(*_unrank_pairs(np.array([unit for unit, _ in draws]), len(group))), draws):
        left, right = images[group[u]], images[group[v]]
        pairs += [Pair((group[u], left[t // len(right)]), (group[v], right[t % len(right)]), False, fold)
                  for t in items.tolist()]
    return pairs


def _capacity_error(fold: int, kind: str, possible: int, per_fold: int) -> CvtoolError:
    return CvtoolError(f"fold {fold + 1}'s identities allow only {possible} distinct {kind} pairs but "
                       f"{per_fold} are requested", where="dataset.pairs_per_fold",
                       fix=f"lower dataset.pairs_per_fold to at most {possible}, use fewer folds or add identities")


def generate_pairs(images: Mapping[str, Collection[int]], *, folds: int = 10, per_fold: int = 300,
                   seed: int = 0) -> list[Pair]:
    """LFW-style pairs for test identities, in file order: identities split (seeded) into `folds` disjoint groups;
    fold f has `per_fold` distinct matched pairs (two images of one identity of group f) then `per_fold` distinct
    mismatched pairs (images of two identities of group f), spread evenly over identities (identity pairs) as far
    as their images allow. Deterministic given the arguments."""
    if folds < 1 or per_fold < 1:
        raise CvtoolError(f"{folds} folds of {per_fold} pairs", where="dataset.pairs_per_fold",
                          fix="use at least one fold and one pair per fold")
    table = {name: sorted(set(map(int, numbers))) for name, numbers in images.items() if numbers}
    if len(table) < 2 * folds:
        raise CvtoolError(f"{len(table)} identities cannot make {folds} folds of mismatched pairs (2 identities each)",
                          where="dataset.pairs_per_fold", fix="use fewer folds or add identities")
    rng = np.random.default_rng(seed)
    pairs = []
    for fold, group in enumerate(_split(table, folds, rng)):
        sizes = np.array([len(table[n]) for n in group], dtype=np.int64)
        matched = int((sizes * (sizes - 1) // 2).sum())
        mismatched = int((sizes.sum() ** 2 - (sizes ** 2).sum()) // 2)
        if matched < per_fold:
            raise _capacity_error(fold, "matched", matched, per_fold)
        if mismatched < per_fold:
            raise _capacity_error(fold, "mismatched", mismatched, per_fold)
        pairs += sorted(_matched(group, table, per_fold, fold, rng), key=lambda p: (p.left, p.right))
        pairs += sorted(_mismatched(group, table, per_fold, fold, rng), key=lambda p: (p.left, p.right))
    return pairs
