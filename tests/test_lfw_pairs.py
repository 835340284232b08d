"""LFW pairs files: reading (View 1 and View 2 headers, line-precise refusals), writing, seeded generation."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from cvtool.data.lfw_pairs import Pair, generate_pairs, lfw_file_name, read_pairs, write_pairs
from cvtool.errors import CvtoolError

# LFW's own lines (pairsDevTrain.txt style: a one-number header, N matched then N mismatched lines, tabs)
VIEW1 = ("2\nAbel_Pacheco\t1\t4\nAkhmed_Zakayev\t1\t3\n"
         "AJ_Cook\t1\tMarsha_Thomason\t1\nAaron_Sorkin\t2\tFrank_Solich\t5\n")
IMAGES = {"Abel_Pacheco": [1, 2, 3, 4], "Akhmed_Zakayev": [1, 2, 3], "AJ_Cook": [1], "Marsha_Thomason": [1, 2],
          "Aaron_Sorkin": [1, 2], "Frank_Solich": [1, 2, 3, 4, 5]}


def uniform_images(identities: int, per_identity: int) -> dict[str, list[int]]:
    return {f"Person_{i:03d}": list(range(1, per_identity + 1)) for i in range(identities)}


def key(pair: Pair) -> tuple:
    return pair.left, pair.right, pair.same, pair.fold


def test_lfw_file_name_pads_to_four_digits():
    assert lfw_file_name("Aaron_Peirsol", 5) == "Aaron_Peirsol/Aaron_Peirsol_0005.jpg"


def test_reads_view1_file_as_one_fold_with_line_numbers(tmp_path):
    path = tmp_path / "pairsDevTrain.txt"
    path.write_text(VIEW1)
    pairs, folds, per_fold = read_pairs(path, IMAGES)
    assert (folds, per_fold) == (1, 2)
    assert pairs == [Pair(("Abel_Pacheco", 1), ("Abel_Pacheco", 4), True, 0, 2),
                     Pair(("Akhmed_Zakayev", 1), ("Akhmed_Zakayev", 3), True, 0, 3),
                     Pair(("AJ_Cook", 1), ("Marsha_Thomason", 1), False, 0, 4),
                     Pair(("Aaron_Sorkin", 2), ("Frank_Solich", 5), False, 0, 5)]


def test_view2_header_splits_blocks_into_folds(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("2 1\nA 1 2\nA 1 B 1\nB 1 2\nB 2 A 2\n")  # spaces accepted as well as tabs
    pairs, folds, per_fold = read_pairs(path)
    assert (folds, per_fold) == (2, 1)
    assert [(p.fold, p.same, p.line) for p in pairs] == [(0, True, 2), (0, False, 3), (1, True, 4), (1, False, 5)]


@pytest.mark.parametrize("text, line, message", [
    ("10 abc\nA 1 2\nA 1 B 1\n", 1, "not 1 or 2 positive integers"),
    ("0\n", 1, "not 1 or 2 positive integers"),
    ("1 2\nA 1 2\nA 2 3\nA 1 B 1\n", 1, "implies 4 pair lines"),  # count: one mismatched line missing
    ("1 1\nA 1 2\nA 1 3\n", 3, "a matched line where the header `1 1` puts fold 1's mismatched pair 1 of 1"),
    ("2 1\nA 1 B 2\nA 1 2\n", 2, "a mismatched line where the header `2 1` puts fold 1's matched pair 1 of 1"),
    ("1\nA 1 2\nA 1 B 1\nB 1 2\n", 4, "more pair lines than the 2"),
    ("1\nA 1\nA 1 B 1\n", 2, "2 fields instead of 3"),
    ("1\nA 1 2\nA 1 B 1 C\n", 3, "5 fields instead of 3"),
    ("1\nA 1 x\nA 1 B 1\n", 2, "image number 'x' is not an integer"),
    ("1\nA 0 2\nA 1 B 1\n", 2, "image number '0' is not an integer >= 1"),
    ("1\nA 1 2\nA 1 A 3\n", 3, "mismatched pair names 'A' twice"),
])
def test_bad_pairs_file_names_file_and_line(tmp_path, text, line, message):
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(CvtoolError, match=re.escape(message)) as caught:
        read_pairs(path)
    assert caught.value.where == f"{path}:{line}"
    assert f"({path}:{line})" in str(caught.value)


@pytest.mark.parametrize("line, message", [
    ("Aaron_Peirsol\t5\t1", "image Aaron_Peirsol/Aaron_Peirsol_0005.jpg is not in the dataset"),
    ("Nobody\t1\t2", "identity 'Nobody' is not in the dataset"),
])
def test_pairs_naming_absent_images_are_refused(tmp_path, line, message):
    path = tmp_path / "pairs.txt"
    path.write_text(f"1\n{line}\nAaron_Peirsol\t1\tB\t1\n")
    with pytest.raises(CvtoolError, match=re.escape(message)) as caught:
        read_pairs(path, {"Aaron_Peirsol": {1, 2, 3, 4}, "B": {1}})
    assert caught.value.where == f"{path}:2"
    read_pairs(path)  # without `images` nothing is checked against the dataset


def test_missing_pairs_file_is_a_clear_error(tmp_path):
    with pytest.raises(CvtoolError, match="pairs file not found") as caught:
        read_pairs(tmp_path / "pairs.txt")
    assert caught.value.where == str(tmp_path / "pairs.txt")


def test_generated_pairs_have_the_exact_lfw_format_and_read_back(tmp_path):
    images = uniform_images(200, 7)  # 20 identities per fold: 20 * C(7, 2) = 420 >= 300 matched pairs possible
    pairs = generate_pairs(images)
    path = write_pairs(tmp_path / "pairs.txt", pairs, 10, 300)
    lines = path.read_text().split("\n")
    assert lines[0] == "10\t300" and lines[-1] == "" and len(lines) == 6002
    for k, line in enumerate(lines[1:-1]):
        matched = k % 600 < 300  # per fold: 300 `name n1 n2` lines, then 300 `name1 n1 name2 n2` lines
        assert re.fullmatch(r"Person_\d{3}\t[1-7]\t[1-7]" if matched else
                            r"Person_\d{3}\t[1-7]\tPerson_\d{3}\t[1-7]", line), (k, line)
    back, folds, per_fold = read_pairs(path, images)
    assert (folds, per_fold) == (10, 300)
    assert [key(p) for p in back] == [key(p) for p in pairs]
    assert [p.line for p in back] == list(range(2, 6002)) and {p.line for p in pairs} == {0}


def test_generation_is_deterministic_and_seeded():
    images = uniform_images(12, 4)
    assert generate_pairs(images, folds=3, per_fold=5, seed=1) == generate_pairs(images, folds=3, per_fold=5, seed=1)
    assert generate_pairs(images, folds=3, per_fold=5, seed=1) != generate_pairs(images, folds=3, per_fold=5, seed=2)
    shuffled = {name: images[name][::-1] for name in reversed(list(images))}  # order of the mapping is irrelevant
    assert generate_pairs(shuffled, folds=3, per_fold=5, seed=1) == generate_pairs(images, folds=3, per_fold=5, seed=1)


def test_generated_folds_are_identity_disjoint_and_pairs_distinct():
    images = {**uniform_images(30, 3), **{f"Single_{i}": [1] for i in range(20)}}
    pairs = generate_pairs(images, folds=5, per_fold=12, seed=3)
    assert [(p.fold, p.same) for p in pairs] == [(f, s) for f in range(5) for s in [True] * 12 + [False] * 12]
    identities = [{name for p in pairs if p.fold == f for name in (p.left[0], p.right[0])} for f in range(5)]
    assert all(identities[f].isdisjoint(identities[g]) for f in range(5) for g in range(f + 1, 5))
    assert len({frozenset((p.left, p.right)) for p in pairs}) == len(pairs)  # no pair twice, in either order
    for p in pairs:
        assert p.left != p.right and (p.left[0] == p.right[0]) == p.same
        assert p.left[1] in images[p.left[0]] and p.right[1] in images[p.right[0]]


def test_matched_pairs_spread_over_identities():
    # one identity with 50 images (1225 pairs) and four with 3 (3 pairs each); 16 matched pairs in one fold:
    # rounds of one pair per identity give 5 + 5 + 5, then the three-image identities are exhausted -> big gets 4
    images = {"Big": list(range(1, 51)), **{f"Small_{i}": [1, 2, 3] for i in range(4)}}
    pairs = generate_pairs(images, folds=1, per_fold=16, seed=0)
    counts = Counter(p.left[0] for p in pairs if p.same)
    assert counts == {"Big": 4, "Small_0": 3, "Small_1": 3, "Small_2": 3, "Small_3": 3}


def test_too_few_pairs_possible_says_how_many():
    images = uniform_images(4, 3)  # 2 folds of 2 identities: 2 * C(3, 2) = 6 matched, 3 * 3 = 9 mismatched pairs
    assert len(generate_pairs(images, folds=2, per_fold=6)) == 24
    with pytest.raises(CvtoolError, match="allow only 6 distinct matched pairs but 7") as caught:
        generate_pairs(images, folds=2, per_fold=7)
    assert caught.value.where == "dataset.pairs_per_fold" and "at most 6" in caught.value.fix
    with pytest.raises(CvtoolError, match="allow only 10 distinct mismatched pairs but 11"):
        generate_pairs({"A": range(1, 11), "B": [1]}, folds=1, per_fold=11)  # C(10, 2) = 45 matched, 10 x 1
    with pytest.raises(CvtoolError, match="3 identities cannot make 2 folds"):
        generate_pairs(uniform_images(3, 5), folds=2, per_fold=1)


def test_write_refuses_pairs_out_of_file_order(tmp_path):
    pairs = generate_pairs(uniform_images(4, 3), folds=2, per_fold=2)
    with pytest.raises(ValueError, match="not 2 folds"):
        write_pairs(tmp_path / "pairs.txt", pairs[::-1], 2, 2)
    assert not (tmp_path / "pairs.txt").exists()
