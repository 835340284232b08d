"""Pictures of the detection error analysis: precision / recall / F1 against the score threshold, and the TIDE
error breakdown (dAP and count per error type). The confusion matrix is drawn by `cvtool.viz.confusion`."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def plot_pr_f1(curve: dict, path: Path, title: str = "") -> Path:
    """Overall (micro) precision, recall and F1 against the score threshold, the best-F1 threshold marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ("precision", "recall", "f1"):
        defined = [(t, v) for t, v in zip(curve["thresholds"], curve[key]) if v is not None]
        ax.plot([t for t, _ in defined], [v for _, v in defined], label=key, linewidth=1.5)
    best = curve["best"]
    if best:
        ax.axvline(best["threshold"], color="grey", linestyle="--", linewidth=1)
        ax.annotate(f"best F1 {best['f1']:.3f} at {best['threshold']:.3g}", (best["threshold"], best["f1"]),
                    textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("score threshold (detections scoring at least this)")
    ax.set_title(title or "precision / recall / F1 vs score threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.12, top=0.92)  # (tight_layout costs ~0.3 s a figure)
    path = _save(fig, path)
    plt.close(fig)
    return path


def plot_tide(tide: dict, path: Path, title: str = "") -> Path:
    """Two bar charts: dAP per error type (main and FalsePos/FalseNeg) and the number of errors per type."""
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    names = list(tide["errors"])
    dap = [(tide["errors"][n]["dAP"] or 0.0) for n in names] + [(v or 0.0) for v in tide["special"].values()]
    labels = names + list(tide["special"])
    colors = ["tab:blue"] * len(names) + ["tab:grey"] * len(tide["special"])
    left.bar(labels, dap, color=colors)
    left.set_ylabel("dAP (AP after the oracle fix - AP)")
    base = "—" if tide["ap"] is None else f"{tide['ap']:.3f}"
    left.set_title(f"dAP per error type (base AP {base})", fontsize=10)
    right.bar(names, [tide["errors"][n]["count"] for n in names], color="tab:orange")
    right.set_ylabel("count")
    right.set_title("errors per type", fontsize=10)
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=30)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title or "TIDE error breakdown", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.17, top=0.85, wspace=0.3)
    path = _save(fig, path)
    plt.close(fig)
    return path
