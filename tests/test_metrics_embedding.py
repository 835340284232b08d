"""Embedding metrics (k-fold verification, ROC/EER/TAR@FAR, leave-one-out retrieval), their evaluator, and stored
embedding files."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.metrics import auc, roc_curve

from cvtool.data.embedding_files import read_embeddings, write_embeddings
from cvtool.errors import CvtoolError
from cvtool.metrics import embedding
from cvtool.metrics.embedding import (
    EmbeddingEvaluator,
    best_threshold,
    embedding_metrics,
    equal_error_rate,
    kfold_verification,
    retrieval_metrics,
    roc_auc,
    roc_points,
    tar_at_far,
    verification_metrics,
)

# three folds of four pairs (distance, same)
FOLDS = [[(0.1, 1), (0.5, 1), (0.4, 0), (0.9, 0)],
         [(0.2, 1), (0.6, 1), (0.3, 0), (0.8, 0)],
         [(0.3, 1), (0.7, 0), (0.35, 1), (1.0, 0)]]
KFOLD_D = np.array([d for fold in FOLDS for d, _ in fold])
KFOLD_SAME = np.array([s for fold in FOLDS for _, s in fold], dtype=bool)
KFOLD_FOLD = np.repeat([0, 1, 2], 4)

# 1-D retrieval case: x positions and identities (item 5 is alone and queries nothing)
POINTS = np.array([[0.0, 0], [1, 0], [2, 0], [3, 0], [5, 0], [9, 0]])
LABELS = np.array([0, 0, 1, 0, 1, 2])


# --- verification -------------------------------------------------------------------------------------------------
def test_kfold_thresholds_and_accuracies_by_hand():
    # Correct = matched accepted (d < t) + mismatched rejected, over the 8 pairs of the other two folds.
    # fold 0, trained on folds 1+2: sorted .2T .3F .3T .35T .6T .7F .8F 1.0F; candidates -.8 .25 .325 .475 .65 .75
    #   .9 2.0 -> correct 4 5 5 6 7 6 5 4: t = .65; fold 0: .1T ok, .5T ok, .4F wrongly accepted, .9F ok -> 3/4
    # fold 1, trained on folds 0+2: .1T .3T .35T .4F .5T .7F .9F 1.0F; candidates -.9 .2 .325 .375 .45 .6 .8 .95 2.0
    #   -> 4 5 6 7 6 7 6 5 4: .375 and .6 tie, the smaller wins; fold 1: .2T ok, .6T rejected, .3F accepted,
    #   .8F ok -> 2/4
    # fold 2, trained on folds 0+1: .1T .2T .3F .4F .5T .6T .8F .9F; candidates -.9 .15 .25 .35 .45 .55 .7 .85 1.9
    #   -> 4 5 6 5 4 5 6 5 4: .25 (not .7, which would score this fold 4/4); fold 2: .3T and .35T rejected -> 2/4
    accuracies, thresholds = kfold_verification(KFOLD_D, KFOLD_SAME, KFOLD_FOLD)
    assert accuracies.tolist() == [0.75, 0.5, 0.5]
    assert thresholds == pytest.approx([0.65, 0.375, 0.25])
    m = verification_metrics(KFOLD_D, KFOLD_SAME, KFOLD_FOLD)
    assert m["accuracy"] == pytest.approx(7 / 12) and m["threshold"] == pytest.approx(1.275 / 3)
    assert m["accuracy_std"] == pytest.approx(np.sqrt(1 / 72))  # population std of .75, .5, .5 around 7/12
    assert m["num_pairs"] == 12


def test_best_threshold_edges_and_strict_comparison():
    assert best_threshold(np.array([1.0, 2.0]), np.array([False, False])) == 0.0  # min - 1: accept nothing
    assert best_threshold(np.array([1.0, 2.0]), np.array([True, True])) == 3.0  # max + 1: accept everything
    # equal distances cannot be split: accepting both (t = 2.25) scores 2 of 3 like rejecting both (t = 0.5)
    assert best_threshold(np.array([1.5, 1.5, 3.0]), np.array([True, False, False])) == 0.5
    # "same iff distance < t": the chosen midpoint separates 1 (accepted) from 2 (rejected)
    assert best_threshold(np.array([1.0, 2.0]), np.array([True, False])) == 1.5


def test_single_fold_reports_no_accuracy():
    m = verification_metrics(np.array([1.0, 2.0, 3.0]), np.array([True, False, True]), np.zeros(3, int))
    assert m["accuracy"] is None and m["accuracy_std"] is None and m["threshold"] is None
    assert m["roc_auc"] == 0.5 and m["num_pairs"] == 3  # pairs (1, 2) and (3, 2): one ordered right, one wrong
    with pytest.raises(ValueError, match="at least 2 folds"):
        kfold_verification(np.array([1.0]), np.array([True]), np.array([0]))


def test_eer_tar_and_auc_by_hand():
    # d 1T 2T 3F 4T 5F (3 matched, 2 mismatched): ROC (fpr, tpr) = (0,0) (0,1/3) (0,2/3) (1/2,2/3) (1/2,1) (1,1)
    d, same = np.array([1.0, 2, 3, 4, 5]), np.array([True, True, False, True, False])
    fpr, tpr, thresholds = roc_points(d, same)
    assert fpr.tolist() == [0, 0, 0, 0.5, 0.5, 1] and tpr == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert thresholds.tolist() == [-np.inf, 1, 2, 3, 4, 5]
    # 1 - tpr - fpr is 1/3 at (0, 2/3) and -1/6 at (1/2, 2/3): crossing 2/3 of the way, fpr = 1/3 = 1 - tpr
    assert equal_error_rate(fpr, tpr) == pytest.approx(1 / 3)
    assert tar_at_far(fpr, tpr, 0.0) == pytest.approx(2 / 3)
    assert tar_at_far(fpr, tpr, 0.4) == pytest.approx(2 / 3)  # no interpolation towards (1/2, 1)
    assert tar_at_far(fpr, tpr, 0.5) == 1.0
    assert roc_auc(d, same) == pytest.approx(5 / 6)  # 5 of 6 (matched, mismatched) pairs ordered right
    # a tie makes a diagonal segment (0, 1/2) -> (1/2, 1); 1 - tpr - fpr goes 1/2 -> -1/2: midpoint (1/4, 3/4)
    fpr, tpr, _ = roc_points(np.array([1.0, 2, 2, 3]), np.array([True, True, False, False]))
    assert equal_error_rate(fpr, tpr) == 0.25
    # the crossing exactly at a ROC point (1/2, 1/2)
    fpr, tpr, _ = roc_points(np.array([1.0, 2, 3, 4]), np.array([True, False, True, False]))
    assert equal_error_rate(fpr, tpr) == 0.5


def frr_minus_far(x: float, fpr: np.ndarray, tpr: np.ndarray) -> float:
    """FRR - FAR on the ROC polyline at FAR x (np.interp follows a vertical run of equal fpr in curve order)."""
    return 1 - x - np.interp(x, fpr, tpr)


def test_roc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(2, 80))
        d = rng.integers(0, 10, n) / 4.0  # many equal distances
        same = rng.random(n) < 0.5
        same[:2] = [True, False]
        fpr, tpr, thresholds = roc_points(d, same)
        ref_fpr, ref_tpr, ref_thresholds = roc_curve(same, -d, drop_intermediate=False)
        np.testing.assert_array_equal(fpr, ref_fpr)
        np.testing.assert_array_equal(tpr, ref_tpr)
        np.testing.assert_array_equal(thresholds, -ref_thresholds)
        assert roc_auc(d, same) == pytest.approx(auc(ref_fpr, ref_tpr), abs=1e-12)
        # EER: where FRR = FAR along the ROC polyline, found by root finding instead of the segment formula
        root = 0.0 if frr_minus_far(0, fpr, tpr) <= 0 else brentq(frr_minus_far, 0, 1, args=(fpr, tpr))
        assert equal_error_rate(fpr, tpr) == pytest.approx(root, abs=1e-9)


def test_roc_numbers_are_none_without_mismatched_pairs():
    m = verification_metrics(np.array([1.0, 2, 3, 4]), np.ones(4, bool), np.array([0, 0, 1, 1]))
    assert m["roc_auc"] is None and m["eer"] is None and m["tar_at_far_1e-3"] is None
    # k-fold still works: fold 0 takes max(3, 4) + 1 = 5 (accepts 1, 2); fold 1 takes 2 + 1 = 3 (rejects 3, 4)
    assert m["accuracy"] == 0.5 and m["threshold"] == 4.0


# --- retrieval ----------------------------------------------------------------------------------------------------
def test_retrieval_by_hand():
    # x = 0A 1A 2B 3A 5B 9C; queries 0-4 (C has no other item). Rankings (ties by item index):
    #   q0: 1A 2B 3A ..       R=2 -> hit@1, AP = (1 + 0) / 2 = 1/2
    #   q1: 0A 2B 3A ..       (0 and 2 tie at 1: item 0 first) hit@1, AP = 1/2
    #   q2: 1A 3A 0A 4B 5C    R=1 -> B at rank 4: hit@5 only, AP = 0
    #   q3: 2B 1A 4B 0A 5C    (1 and 4 tie at 2) R=2 -> hit@2, AP = (0 + 1/2) / 2 = 1/4
    #   q4: 3A 2B ..          R=1 -> hit@2, AP = 0
    m = retrieval_metrics(POINTS, LABELS, ks=(1, 2, 5))
    assert m == {"recall_at_1": 2 / 5, "recall_at_2": 4 / 5, "recall_at_5": 1.0, "map_at_r": 0.25, "num_queries": 5}
    assert retrieval_metrics(POINTS, np.arange(6))["recall_at_1"] is None  # no identity has two items


def brute_force_retrieval(embeddings: np.ndarray, labels: np.ndarray, ks=(1, 5)) -> dict:
    distance = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=2)
    hits, aps = {k: [] for k in ks}, []
    for q in range(len(labels)):
        r = int((labels == labels[q]).sum()) - 1
        if r == 0:
            continue
        ranking = sorted((j for j in range(len(labels)) if j != q), key=lambda j: (distance[q, j], j))
        rel = [labels[j] == labels[q] for j in ranking]
        for k in ks:
            hits[k].append(any(rel[:k]))
        aps.append(sum(sum(rel[:i + 1]) / (i + 1) for i in range(r) if rel[i]) / r)
    return {**{f"recall_at_{k}": float(np.mean(v)) for k, v in hits.items()}, "map_at_r": float(np.mean(aps)),
            "num_queries": len(aps)}


@pytest.mark.parametrize("chunk", [embedding.RETRIEVAL_CHUNK, 50])
def test_retrieval_matches_brute_force(monkeypatch, chunk):
    monkeypatch.setattr(embedding, "RETRIEVAL_CHUNK", chunk)  # 50 entries: 1 to 10 queries per chunk
    rng = np.random.default_rng(1)
    for _ in range(8):
        n = int(rng.integers(5, 60))
        points = rng.integers(-2, 3, (n, 3)).astype(float)  # small integers: exact distances, many ties
        labels = rng.integers(0, 6, n)
        assert retrieval_metrics(points, labels) == pytest.approx(brute_force_retrieval(points, labels), abs=1e-12)


def test_chance_retrieval_by_hand_and_by_enumeration():
    # LABELS: M = 5 others; three queries with R = 2, two with R = 1 (item 5 queries nothing).
    # Recall@1 = R / M: (3 * 2/5 + 2 * 1/5) / 5 = 0.32; Recall@5 = 1 (all others are in the top 5).
    # AP@R, R = 2: the 10 equally likely position pairs of the relevant two: {1,2} -> 1, {1,3..5} -> 1/2 (3 of them),
    # {2,3..5} -> 1/4 (3), the rest 0: 3.25 / 10 = 0.325; R = 1: 1/5. MAP@R = (3 * 0.325 + 2 * 0.2) / 5 = 0.275
    assert embedding.chance_retrieval(LABELS) == pytest.approx(
        {"recall_at_1": 0.32, "recall_at_5": 1.0, "map_at_r": 0.275, "num_queries": 5})
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2])  # every ranking of the 7 others, for each query
    scores = {"recall_at_2": [], "map_at_r": []}
    for q in range(7):
        others = [j for j in range(8) if j != q]
        r = int((labels == labels[q]).sum()) - 1
        for ranking in itertools.permutations(others):
            rel = [labels[j] == labels[q] for j in ranking]
            scores["recall_at_2"].append(any(rel[:2]))
            scores["map_at_r"].append(sum(sum(rel[:i + 1]) / (i + 1) for i in range(r) if rel[i]) / r)
    chance = embedding.chance_retrieval(labels, ks=(2,))
    assert chance["recall_at_2"] == pytest.approx(np.mean(scores["recall_at_2"]))
    assert chance["map_at_r"] == pytest.approx(np.mean(scores["map_at_r"]))


def test_chance_metrics_name_the_task_metrics():
    # unbalanced folds (same: 1 1 1 0 | 1 1 0 0) with all-equal distances: fold 0 takes fold 1's tie (2 vs 2) ->
    # the smaller candidate, reject all: 1/4; fold 1 takes fold 0's majority, accept all: 2/4 -> 0.375
    rows = np.array([[0, 1, 1, 0], [0, 3, 1, 0], [1, 3, 1, 0], [0, 2, 0, 0],
                     [2, 4, 1, 1], [2, 4, 1, 1], [0, 4, 0, 1], [1, 5, 0, 1]])
    chance = embedding.chance_metrics(EmbeddingEvaluator(LABELS.tolist(), rows))
    assert chance == pytest.approx({"verification.accuracy": 0.375, "verification.roc_auc": 0.5,
                                    "retrieval.recall_at_1": 0.32, "retrieval.recall_at_5": 1.0,
                                    "retrieval.map_at_r": 0.275})
    assert set(embedding.chance_metrics(EmbeddingEvaluator([0, 1], None))) == set()  # nothing to score


# --- evaluator ----------------------------------------------------------------------------------------------------
PAIR_DISTANCES = np.array([1.0, 2, 4, 3, 3, 7, 2, 4])  # of pair_rows() on the x positions 0 1 2 3 5 9


def pair_rows() -> np.ndarray:
    """(i, j, same, fold) rows into POINTS, two folds of four pairs."""
    return np.array([[0, 1, 1, 0], [0, 2, 0, 0], [1, 4, 0, 0], [2, 4, 1, 0],
                     [0, 3, 1, 1], [2, 5, 0, 1], [1, 3, 1, 1], [4, 5, 0, 1]])


def test_embedding_metrics_use_euclidean_pair_distances():
    m = embedding_metrics(POINTS, LABELS, pair_rows())
    same, folds = pair_rows()[:, 2].astype(bool), pair_rows()[:, 3]
    assert m["verification"] == verification_metrics(PAIR_DISTANCES, same, folds)
    assert m["retrieval"] == retrieval_metrics(POINTS, LABELS)
    assert m["num_images"] == 6 and m["num_identities"] == 3
    assert "verification" not in embedding_metrics(POINTS, LABELS, None)


def test_evaluator_orders_batches_and_ranks_by_index(monkeypatch):
    import torch

    evaluator = EmbeddingEvaluator(LABELS.tolist(), pair_rows())
    evaluator.process({"index": torch.tensor([4, 1])}, torch.tensor(POINTS[[4, 1]], dtype=torch.float32))
    evaluator.process({"index": [5]}, POINTS[[5]])
    other_rank = EmbeddingEvaluator(LABELS.tolist(), pair_rows())  # a second DDP rank's share
    other_rank.process({"index": np.array([3, 0, 2])}, POINTS[[3, 0, 2]])
    monkeypatch.setattr(embedding.dist, "all_gather_objects", lambda parts: [other_rank.parts, parts])
    assert evaluator.evaluate() == embedding_metrics(POINTS, LABELS, pair_rows())
    np.testing.assert_array_equal(evaluator.embeddings, POINTS)
    fpr, tpr = evaluator.last_roc
    np.testing.assert_array_equal(fpr, roc_points(PAIR_DISTANCES, pair_rows()[:, 2])[0])
    assert len(fpr) == len(tpr)
    evaluator.reset()
    monkeypatch.setattr(embedding.dist, "all_gather_objects", lambda parts: [parts])
    evaluator.process({"index": [0, 1]}, POINTS[:2])
    with pytest.raises(ValueError, match="each of the 6 items once"):
        evaluator.evaluate()


# --- stored embeddings --------------------------------------------------------------------------------------------
def test_embeddings_round_trip(tmp_path):
    values = np.arange(6, dtype=np.float64).reshape(3, 2) / 7
    paths = write_embeddings(tmp_path, values, ["a/a_0001.jpg", "b,c/x.jpg", "c.jpg"], ["a", "b,c", ""])
    assert [p.name for p in paths] == ["embeddings.npy", "index.csv"]
    assert (tmp_path / "index.csv").read_text().splitlines()[0] == "index,path,identity"
    array, names, identities = read_embeddings(tmp_path)  # the directory, or the .npy itself
    assert array.dtype == np.float32 and np.array_equal(array, values.astype(np.float32))
    assert names == ["a/a_0001.jpg", "b,c/x.jpg", "c.jpg"] and identities == ["a", "b,c", None]
    write_embeddings(tmp_path, values, ["x", "y", "z"], None)
    assert read_embeddings(tmp_path / "embeddings.npy")[2] == [None, None, None]


@pytest.mark.parametrize("array, index, where, message", [
    (np.zeros(3, np.float32), None, "embeddings.npy", "non-empty 2-D float array"),
    (np.zeros((3, 2), np.int64), None, "embeddings.npy", "non-empty 2-D float array"),
    (np.array([[0.0, 1], [np.nan, 0], [0, 0]]), None, "embeddings.npy", "embedding 1 has a non-finite value"),
    (np.zeros((3, 2)), "index,path,identity\n0,a,\n1,b,\n", "index.csv", "2 rows but the embeddings array has 3"),
    (np.zeros((3, 2)), "index,path\n0,a\n1,b\n2,c\n", "index.csv:1", "the header is not index,path,identity"),
    (np.zeros((3, 2)), "index,path,identity\n0,a,\n2,b,\n1,c,\n", "index.csv:3", "expected `1,path,identity`"),
    (np.zeros((3, 2)), "index,path,identity\n0,a,\n1,b\n2,c,\n", "index.csv:3", "expected `1,path,identity`"),
])
def test_bad_embedding_files_are_refused(tmp_path, array, index, where, message):
    np.save(tmp_path / "embeddings.npy", array)
    if index is not None:
        (tmp_path / "index.csv").write_text(index)
    with pytest.raises(CvtoolError, match=message) as caught:
        read_embeddings(tmp_path / "embeddings.npy")
    assert caught.value.where == f"{tmp_path}/{where}"


def test_missing_embedding_files_are_refused(tmp_path):
    with pytest.raises(CvtoolError, match="embeddings file not found"):
        read_embeddings(tmp_path)
    np.save(tmp_path / "embeddings.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(CvtoolError, match="index.csv not found") as caught:
        read_embeddings(tmp_path)
    assert caught.value.where == str(tmp_path / "index.csv")


def test_numpy_modules_do_not_import_torch(tmp_path):
    poison = tmp_path / "poison"
    for name in ("torch", "torchvision"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(f"raise ImportError('{name} imported by a numpy-only module')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison), str(Path.cwd())])}
    code = ("import numpy as np\n"
            "from cvtool.data import embedding_files, lfw_pairs\n"
            "from cvtool.metrics.embedding import EmbeddingEvaluator\n"
            "e = EmbeddingEvaluator([0, 0, 1], np.array([[0, 1, 1, 0], [0, 2, 0, 1]]))\n"
            "e.process({'index': [2, 0, 1]}, np.eye(3)[[2, 0, 1]])\n"
            "print(e.evaluate()['retrieval']['num_queries'], lfw_pairs.lfw_file_name('a', 1))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["2", "a/a_0001.jpg"]
