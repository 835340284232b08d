"""Training curves (loss, learning rate, validation metric) from metrics.jsonl records, as one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

MAX_POINTS = 400


def plot_training_curves(records: list[dict], path: Path, metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [r for r in records if "train/loss" in r]
    val = [r for r in records if metric in r]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    panels = [(axes[0], train, "train/loss", "training loss"), (axes[1], train, "lr", "learning rate"),
              (axes[2], val, metric, metric)]
    for ax, rows, key, title in panels:
        ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o" if rows is val else None,
                markersize=3)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if train and min(r["train/loss"] for r in train) > 0:
        axes[0].set_yscale("log")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_pr_curves(curves: dict, path: Path, title: str = "") -> Path:
    """Precision-recall curves, one line per class: {name: (recall, precision)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5.5))
    for name, (recall, precision) in curves.items():
        if len(recall) > MAX_POINTS:  # a picture: thin long rankings (drawing 100k points costs seconds)
            keep = np.unique(np.linspace(0, len(recall) - 1, MAX_POINTS).astype(int))
            recall, precision = np.asarray(recall)[keep], np.asarray(precision)[keep]
        ax.plot(recall, precision, label=name, linewidth=1.2)
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(title or "precision-recall")
    ax.grid(alpha=0.3)
    if len(curves) <= 25:
        ax.legend(fontsize=7, loc="lower left")
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.1, top=0.93)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
