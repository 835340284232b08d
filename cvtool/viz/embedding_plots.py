"""Pictures of an embedding model: the verification ROC, a 2-D projection coloured by identity, and query images
beside their nearest neighbours. Inputs are numpy arrays (no torch here: the stored-evaluation path uses it)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.viz.explain_figure import pyplot, save_figure

PROJECTIONS = {"pca": "PCA", "tsne": "t-SNE"}
MARKERS = "o^sDvP*X"  # with tab10's colours: 80 distinguishable identity styles
SAME, DIFFERENT = "#2ca02c", "#d62728"


def nearest_neighbours(embeddings: np.ndarray, queries: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, distances), each (len(queries), min(k, N - 1)): every query's nearest other items by Euclidean
    distance, nearest first, ties broken by the smaller index; the query itself is left out (its duplicates are
    not). `k` above the number of other items is clipped to it, so a row lists every other item."""
    if k < 1:
        raise CvtoolError(f"the number of neighbours must be at least 1, got {k}", where="k", fix="set k >= 1")
    embeddings = np.asarray(embeddings, dtype=np.float64)
    k = min(k, len(embeddings) - 1)
    indices = np.empty((len(queries), k), dtype=np.int64)
    distances = np.empty((len(queries), k))
    for row, query in enumerate(queries):
        distance = np.sqrt(((embeddings - embeddings[query]) ** 2).sum(axis=1))
        distance[query] = np.inf
        order = np.argsort(distance, kind="stable")[:k]  # stable: equal distances keep index order
        indices[row], distances[row] = order, distance[order]
    return indices, distances


def roc_figure(path: Path, fpr: np.ndarray, tpr: np.ndarray, *, auc: float, eer: float,
               tar_at_far: float | None = None, far: float = 1e-3, title: str = "") -> Path:
    """The ROC twice: against a log false-positive-rate axis (FPR 0 drawn at a floor below the smallest positive
    FPR) to read the low-FAR end, and against a linear one. Marks the EER point, the FAR = `far` line and, when
    `tar_at_far` is given, the operating point (far, tar_at_far)."""
    fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
    positive = fpr[fpr > 0]
    floor = 10 ** np.floor(np.log10(min(far / 10, positive.min() if positive.size else 1.0)))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
    for ax, log in zip(axes, (True, False)):
        ax.plot(np.maximum(fpr, floor) if log else fpr, tpr, color="#1f77b4", linewidth=1.6,
                label=f"ROC, AUC {auc:.4f}")
        ax.plot([max(eer, floor) if log else eer], [1 - eer], "o", color="black", markersize=6, clip_on=False,
                label=f"EER {eer:.4f} (FPR = FNR)")
        ax.axvline(far, color="grey", linestyle=":", linewidth=1, label=f"FAR = {far:g}")
        if tar_at_far is not None:
            ax.plot([far], [tar_at_far], "s", color=DIFFERENT, markersize=6, clip_on=False,
                    label=f"TAR {tar_at_far:.4f} at FAR {far:g}")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("false positive rate (different identities accepted)")
        ax.set_ylabel("true positive rate (same identity accepted)")
        ax.grid(alpha=0.3, which="both" if log else "major")
        if log:
            ax.set_xscale("log")
            ax.set_xlim(floor, 1)
            ax.set_title(f"log FPR (FPR 0 drawn at {floor:g})", fontsize=10)
            ax.legend(fontsize=8, loc="best")
        else:
            ax.plot([0, 1], [1, 0], color="grey", linewidth=0.8, linestyle="--")  # FPR = FNR: crosses at the EER
            ax.set_xlim(0, 1)
            ax.set_title("linear FPR", fontsize=10)
    fig.suptitle(title or "verification ROC")
    return save_figure(fig, path)


def projection_figure(path: Path, embeddings: np.ndarray, labels: np.ndarray, names: Sequence[str], *,
                      method: str = "pca", max_identities: int = 20, seed: int = 0, title: str = "") -> Path:
    """A 2-D PCA or t-SNE (seeded; perplexity at most N - 1) projection of the items of the `max_identities`
    identities with the most items (ties: smaller label), one colour/marker per identity, a legend up to 20."""
    if method not in PROJECTIONS:
        raise CvtoolError(f"unknown projection method {method!r}", where="method",
                          fix=f"use one of {', '.join(PROJECTIONS)}")
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=len(names))
    kept = np.argsort(-counts, kind="stable")[:max_identities]
    kept = kept[counts[kept] > 0]
    mask = np.isin(labels, kept)
    points = np.asarray(embeddings, dtype=np.float64)[mask]
    if len(points) < 3:
        raise CvtoolError(f"a projection needs at least 3 embeddings, got {len(points)}", where="embeddings",
                          fix="evaluate on more images")
    xy = _project(points, method, seed)
    plt = pyplot()
    legend = len(kept) <= 20
    fig, ax = plt.subplots(figsize=(9.5 if legend else 7.5, 6.5))
    for rank, label in enumerate(kept):
        mine = labels[mask] == label
        ax.scatter(xy[mine, 0], xy[mine, 1], s=22, alpha=0.85, color=plt.get_cmap("tab10")(rank % 10),
                   marker=MARKERS[rank // 10 % len(MARKERS)], label=f"{names[label]} ({mine.sum()})")
    identities = int((counts > 0).sum())
    subset = f"all {identities} identities" if len(kept) == identities else \
        f"the {len(kept)} identities with most images (of {identities})"
    ax.set_title(f"{title or 'embeddings'}: {PROJECTIONS[method]} of {len(points)} images\n{subset}", fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return save_figure(fig, path)


def _project(points: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(points)
    from sklearn.manifold import TSNE

    return TSNE(n_components=2, perplexity=min(30.0, len(points) - 1), init="pca",
                random_state=seed).fit_transform(points)


def neighbours_figure(path: Path, images: Sequence[np.ndarray] | Mapping[int, np.ndarray], query_indices,
                      neighbour_indices: np.ndarray, distances: np.ndarray, labels, names: Sequence[str], *,
                      threshold: float | None = None) -> Path:
    """One row per query: its image, then its neighbours' (as `nearest_neighbours` returns them), each titled with
    identity and distance; a neighbour's frame is green when its identity is the query's, red otherwise. With
    `threshold`, each neighbour also reads "same" (distance < threshold) or "diff". `images[i]` is item i's uint8
    H x W x 3 picture (a list of all items, or a dict of the drawn ones)."""
    plt = pyplot()
    rows, columns = len(query_indices), 1 + np.shape(neighbour_indices)[1]
    fig, axes = plt.subplots(rows, columns, figsize=(1.9 * columns, 2.1 * rows + 0.5), squeeze=False)
    for row, query in enumerate(query_indices):
        _cell(axes[row, 0], images[query], f"query\n{_short(names[labels[query]])}", "black")
        for col, (item, distance) in enumerate(zip(neighbour_indices[row], distances[row]), start=1):
            verdict = "" if threshold is None else (" same" if distance < threshold else " diff")
            _cell(axes[row, col], images[item], f"{_short(names[labels[item]])}\nd {distance:.3f}{verdict}",
                  SAME if labels[item] == labels[query] else DIFFERENT)
    rule = "" if threshold is None else f"; same/diff: distance below/above the threshold {threshold:.3f}"
    fig.suptitle(f"nearest neighbours (frame green: the query's identity, red: another{rule})", fontsize=9)
    return save_figure(fig, path, top=1 - 0.3 / fig.get_figheight())


def _cell(ax, image: np.ndarray, title: str, frame: str) -> None:
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(frame)
        spine.set_linewidth(4)


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"
