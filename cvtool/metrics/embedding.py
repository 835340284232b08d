"""Embedding metrics: pair verification (LFW protocol: k-fold accuracy, ROC AUC, EER, TAR@FAR) and leave-one-out
retrieval (Recall@k, MAP@R).

Distances are Euclidean on the embeddings as given; a pair is predicted "same" when its distance is below the
threshold. Verification accuracy follows LFW's unrestricted protocol: each fold is scored with the threshold that
maximises accuracy on the other folds. Retrieval ranks every other item by distance (ties by item index).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cvtool.utils import distributed as dist

from .base import to_numpy

RETRIEVAL_CHUNK = 1 << 22  # distance-matrix entries computed at once (queries per chunk = this / items)


# --- verification -------------------------------------------------------------------------------------------------
def roc_points(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) of accepting pairs with distance <= threshold, one point per distinct distance plus
    the first point (0, 0) at threshold -inf: sklearn's roc_curve(same, -distances, drop_intermediate=False) with
    its thresholds negated back to distances. fpr (tpr) is nan when there is no mismatched (matched) pair."""
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    order = np.argsort(distances, kind="mergesort")
    d, s = distances[order], same[order]
    last = np.r_[np.flatnonzero(np.diff(d)), len(d) - 1]  # last index of each distinct distance
    tps = np.r_[0, np.cumsum(s)[last]]
    fps = np.r_[0, last + 1 - tps[1:]]
    with np.errstate(invalid="ignore", divide="ignore"):
        return fps / fps[-1], tps / tps[-1], np.r_[-np.inf, d[last]]


def roc_auc(distances: np.ndarray, same: np.ndarray) -> float:
    """Area under `roc_points` by the trapezoid rule (sklearn's auc of that curve)."""
    fpr, tpr, _ = roc_points(distances, same)
    return float(np.trapezoid(tpr, fpr))  # nan when a class is missing


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """The error rate where the false accept rate equals the false reject rate (FPR = 1 - TPR): on the ROC
    polyline, the point of the segment where 1 - tpr - fpr changes sign, linearly interpolated along it (a ROC point
    where it is 0 is the answer itself). nan for an undefined ROC."""
    gap = 1.0 - np.asarray(tpr, np.float64) - np.asarray(fpr, np.float64)  # non-increasing along the curve
    if not np.isfinite(gap).all():
        return float("nan")
    i = int(np.argmax(gap <= 0))  # the first point at or past the crossing; gap[0] = 1 > 0 at (0, 0)
    if gap[i] == 0:
        return float(fpr[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tar_at_far(fpr: np.ndarray, tpr: np.ndarray, far: float) -> float:
    """True accept rate at a false accept rate: the largest TPR among ROC points with FPR <= far (no
    interpolation; the (0, 0) point is always eligible)."""
    return float(np.max(np.asarray(tpr)[np.asarray(fpr) <= far], initial=0.0))


def best_threshold(distances: np.ndarray, same: np.ndarray) -> float:
    """The threshold t maximising the accuracy of "same iff distance < t" on these pairs. Candidates: midpoints
    between consecutive distinct distances, min - 1 and max + 1; ties go to the smallest candidate."""
    d = np.sort(np.asarray(distances, dtype=np.float64))
    same_sorted = np.asarray(same, dtype=bool)[np.argsort(distances, kind="mergesort")]
    values = np.unique(d)
    candidates = np.r_[values[0] - 1, (values[:-1] + values[1:]) / 2, values[-1] + 1]
    accepted = np.searchsorted(d, candidates, side="left")  # pairs with distance < candidate
    accepted_same = np.r_[0, np.cumsum(same_sorted)][accepted]
    correct = accepted_same + (len(d) - accepted) - (same_sorted.sum() - accepted_same)
    return float(candidates[np.argmax(correct)])


def kfold_verification(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy, threshold) per fold, in increasing fold id order: fold f is scored with the best_threshold of
    all pairs of the other folds. Needs at least two folds."""
    distances, same, folds = np.asarray(distances, np.float64), np.asarray(same, bool), np.asarray(folds)
    ids = np.unique(folds)
    if len(ids) < 2:
        raise ValueError(f"k-fold verification needs at least 2 folds, got {len(ids)}")
    thresholds = np.array([best_threshold(distances[folds != f], same[folds != f]) for f in ids])
    accuracies = np.array([np.mean((distances[folds == f] < t) == same[folds == f]) for f, t in zip(ids, thresholds)])
    return accuracies, thresholds


def _defined(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def _verification(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> tuple[dict, tuple]:
    fpr, tpr, _ = roc_points(distances, same)
    metrics = {"accuracy": None, "accuracy_std": None, "threshold": None,
               "roc_auc": _defined(roc_auc(distances, same)), "eer": _defined(equal_error_rate(fpr, tpr)),
               "tar_at_far_1e-3": _defined(tar_at_far(fpr, tpr, 1e-3)) if np.isfinite(fpr).all() else None,
               "num_pairs": len(distances)}
    if len(np.unique(folds)) > 1:
        accuracies, thresholds = kfold_verification(distances, same, folds)
        metrics.update(accuracy=float(accuracies.mean()), accuracy_std=float(accuracies.std()),
                       threshold=float(thresholds.mean()))
    return metrics, (fpr, tpr)


def verification_metrics(distances: np.ndarray, same: np.ndarray, folds: np.ndarray) -> dict:
    """{"accuracy": mean of the k-fold accuracies, "accuracy_std": their population std, "threshold": mean chosen
    threshold, "roc_auc", "eer", "tar_at_far_1e-3" (on all pairs), "num_pairs"}. With a single fold there is no
    held-out threshold (choosing it on the scored pairs themselves would be optimistic): accuracy, accuracy_std and
    threshold are None. ROC numbers are None without both matched and mismatched pairs."""
    return _verification(distances, same, folds)[0]


# --- retrieval ----------------------------------------------------------------------------------------------------
def _ranked_neighbours(embeddings: np.ndarray, queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(query row, item) of each query's nearest other items in rank order (distance, then item index), at least
    `depth` of them per query (more where items tie with the depth-th), flattened query by query."""
    squared = (embeddings ** 2).sum(1)
    d = squared[queries, None] + squared[None, :] - 2 * embeddings[queries] @ embeddings.T  # same order as distance
    d = np.maximum(d, 0)
    d[np.arange(len(queries)), queries] = np.inf  # the query itself comes last
    kth = np.partition(d, depth - 1, axis=1)[:, depth - 1:depth]
    rows, items = np.nonzero(d <= kth)
    order = np.lexsort((items, d[rows, items], rows))
    return rows[order], items[order]


def _retrieval_chunk(embeddings: np.ndarray, labels: np.ndarray, queries: np.ndarray, relevant: np.ndarray,
                     ks: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(hits (K, Q) of recall@k per k, AP@R (Q,)) of these queries; relevant = R per query."""
    depth = min(max(*ks, int(relevant.max())), len(labels) - 1)
    rows, items = _ranked_neighbours(embeddings, queries, depth)
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows)  # 0-based position in its query's ranking
    rel = labels[items] == labels[queries[rows]]
    hits_before = np.cumsum(rel) - np.r_[0, np.cumsum(rel)][np.searchsorted(rows, rows)]  # relevant up to here
    precision = np.where(rel & (rank < relevant[rows]), hits_before / (rank + 1), 0.0)
    ap = np.bincount(rows, weights=precision, minlength=len(queries)) / relevant
    hits = np.stack([np.bincount(rows, weights=rel & (rank < k), minlength=len(queries)) > 0 for k in ks])
    return hits, ap


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """Leave-one-out retrieval: every item with another item of its label queries all other items, ranked by
    Euclidean distance (ties by item index). {"recall_at_<k>": fraction of queries with a same-label item among
    their k nearest, "map_at_r": MAP@R (Musgrave et al. 2020: (1/R) sum_{i<=R} P@i rel_i, R = the query's other
    same-label items), "num_queries"}; values None without a query. Computed in query chunks."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    relevant = counts[inverse] - 1
    queries = np.flatnonzero(relevant > 0)
    step = max(1, RETRIEVAL_CHUNK // max(len(labels), 1))
    chunks = [_retrieval_chunk(embeddings, labels, queries[i:i + step], relevant[queries[i:i + step]], ks)
              for i in range(0, len(queries), step)]
    if not chunks:
        return {**{f"recall_at_{k}": None for k in ks}, "map_at_r": None, "num_queries": 0}
    hits = np.concatenate([h for h, _ in chunks], axis=1)
    return {**{f"recall_at_{k}": float(h.mean()) for k, h in zip(ks, hits)},
            "map_at_r": float(np.concatenate([ap for _, ap in chunks]).mean()), "num_queries": len(queries)}


# --- both ---------------------------------------------------------------------------------------------------------
def _embedding_metrics(embeddings: np.ndarray, labels: np.ndarray,
                       pair_indices: np.ndarray | None) -> tuple[dict, tuple | None]:
    embeddings = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels)
    metrics, roc = {}, None
    if pair_indices is not None:
        pairs = np.asarray(pair_indices, dtype=np.int64).reshape(-1, 4)
        distances = np.linalg.norm(embeddings[pairs[:, 0]] - embeddings[pairs[:, 1]], axis=1)
        metrics["verification"], roc = _verification(distances, pairs[:, 2] != 0, pairs[:, 3])
    metrics.update(retrieval=retrieval_metrics(embeddings, labels), num_images=len(embeddings),
                   num_identities=len(np.unique(labels)))
    return metrics, roc


def embedding_metrics(embeddings: np.ndarray, labels: np.ndarray, pair_indices: np.ndarray | None) -> dict:
    """{"verification": verification_metrics of the pairs (only with pair_indices: (P, 4) rows (i, j, same 0/1,
    fold) indexing `embeddings`), "retrieval": retrieval_metrics, "num_images", "num_identities"}."""
    return _embedding_metrics(embeddings, labels, pair_indices)[0]


# --- chance -------------------------------------------------------------------------------------------------------
def chance_retrieval(labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """Expected retrieval_metrics when every query ranks its M = N - 1 others in a uniformly random order. A query
    with R relevant others: Recall@k = 1 - C(M - R, k) / C(M, k); E[AP@R] = H_R / M + (R - 1)(R - H_R) / (M (M - 1))
    (E[P@i rel_i] = (R / M + (i - 1) R (R - 1) / (M (M - 1))) / i summed over i <= R, over R; H_R harmonic)."""
    _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
    r = (counts[inverse] - 1)[counts[inverse] > 1].astype(np.float64)
    if not r.size:
        return {**{f"recall_at_{k}": None for k in ks}, "map_at_r": None, "num_queries": 0}
    m = float(len(labels) - 1)
    miss = {k: np.prod([np.clip((m - r - i) / (m - i), 0, None) for i in range(min(k, int(m)))], axis=0) for k in ks}
    harmonic = np.cumsum(1 / np.arange(1, r.max() + 1))[r.astype(np.int64) - 1]
    ap = harmonic / m + ((r - 1) * (r - harmonic) / (m * (m - 1)) if m > 1 else 0.0)
    return {**{f"recall_at_{k}": float(np.mean(1 - miss[k])) for k in ks}, "map_at_r": float(ap.mean()),
            "num_queries": len(r)}


def chance_metrics(evaluator: EmbeddingEvaluator) -> dict[str, float]:
    """What a model whose embeddings carry no identity scores on the evaluator's split, under the dotted metric
    names: verification as all-equal embeddings score it (k-fold: each fold takes the majority decision of the
    other folds, 0.5 on LFW's balanced folds; ROC AUC 0.5), retrieval as a uniformly random ranking."""
    values = {f"retrieval.{k}": v for k, v in chance_retrieval(evaluator.labels).items() if k != "num_queries"}
    if evaluator.pair_indices is not None:
        pairs = np.asarray(evaluator.pair_indices, dtype=np.int64).reshape(-1, 4)
        metrics = verification_metrics(np.zeros(len(pairs)), pairs[:, 2] != 0, pairs[:, 3])
        values.update({f"verification.{k}": metrics[k] for k in ("accuracy", "roc_auc")})
    return {key: value for key, value in values.items() if value is not None}


class EmbeddingEvaluator:
    """`process(inputs, embeddings)` with inputs["index"] (dataset item indices of the batch); `evaluate` gathers
    the embeddings of all DDP ranks, orders them by item index and returns `embedding_metrics`. Afterwards
    `embeddings` (N, D) and `last_roc` ((fpr, tpr), None without pairs) stay for plots."""

    def __init__(self, labels: Sequence[int], pair_indices: np.ndarray | None):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.pair_indices = pair_indices
        self.embeddings: np.ndarray | None = None
        self.last_roc: tuple[np.ndarray, np.ndarray] | None = None
        self.reset()

    def reset(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray]] = []

    def process(self, inputs: dict, outputs) -> None:
        index = to_numpy(inputs["index"], np.int64).reshape(-1)
        self.parts.append((index, to_numpy(outputs, np.float32).reshape(len(index), -1)))

    def protocol(self) -> str:
        pairs = "no verification pairs" if self.pair_indices is None else \
            f"{len(self.pair_indices)} verification pairs: k-fold accuracy (threshold of the other folds), ROC AUC, " \
            "EER, TAR@FAR=1e-3"
        return (f"Euclidean distances between embeddings of {len(self.labels)} images; {pairs}; leave-one-out "
                "retrieval Recall@1/5 and MAP@R over images whose identity has another image")

    def evaluate(self) -> dict:
        parts = [part for rank in dist.all_gather_objects(self.parts) for part in rank]
        index = np.concatenate([i for i, _ in parts]) if parts else np.zeros(0, np.int64)
        if not np.array_equal(np.sort(index), np.arange(len(self.labels))):
            raise ValueError(f"processed item indices are not each of the {len(self.labels)} items once")
        self.embeddings = np.concatenate([e for _, e in parts])[np.argsort(index)]
        metrics, self.last_roc = _embedding_metrics(self.embeddings, self.labels, self.pair_indices)
        return metrics
