"""Confusion-matrix picture (rows: true class, columns: predicted class, row-normalised colours, counts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_LABELLED = 30  # above this many classes, tick labels and cell counts are left out


def plot_confusion(confusion: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    rows = confusion.sum(axis=1, keepdims=True)
    normalised = np.divide(confusion, rows, out=np.zeros(confusion.shape, dtype=np.float64), where=rows > 0)
    side = min(4 + 0.45 * n, 16)
    fig, ax = plt.subplots(figsize=(side, side * 0.85))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if n <= MAX_LABELLED:
        ax.set_xticks(range(n), class_names, rotation=45, ha="right")
        ax.set_yticks(range(n), class_names)
        as_counts = confusion.max() < 10_000  # pixel counts (segmentation) are shown as fractions
        for (i, j), count in np.ndenumerate(confusion):
            if count:
                ax.text(j, i, str(count) if as_counts else f"{normalised[i, j]:.2f}", ha="center", va="center",
                        fontsize=8, color="white" if normalised[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
