"""Pictures of region proposals: recall against the number of proposals per image for several methods, and an
image with its top proposals drawn. numpy, PIL and matplotlib only (no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cvtool.utils.atomic import atomic_write
from cvtool.viz.draw import labelled
from cvtool.viz.explain_figure import pyplot, save_figure

PANELS = (("recall@0.5", "recall at IoU 0.5"), ("recall@0.7", "recall at IoU 0.7"),
          ("AR", "average recall (IoU 0.5:0.95)"))
MIN_SIDE = 256  # draw_proposals upscales smaller images to this for legibility


def plot_recall_curves(curves: dict[str, dict[str, list[float | None]]], counts: list[int], path: Path) -> Path:
    """One PNG: recall@0.5, recall@0.7 and AR (panels) against proposals per image (log x), one line per method
    of `curves` ({method: `cvtool.metrics.proposals.recall_curve(...)` over `counts`}); undefined points skipped."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.8))
    for ax, (key, title) in zip(axes, PANELS):
        for method, curve in curves.items():
            values = np.array([np.nan if v is None else v for v in curve[key]], dtype=np.float64)
            ax.plot(counts, values, marker="o", markersize=3, linewidth=1.4, label=method)
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("proposals per image")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_ylabel("recall")
    if curves:
        axes[0].legend(fontsize=8, loc="lower right")
    return save_figure(fig, Path(path))


def draw_proposals(image: np.ndarray, boxes: np.ndarray, path: Path, top: int = 50) -> Path:
    """`image` (H x W x 3 uint8, or float in [0, 1]) with its first `top` proposals (continuous XYXY px, ranked)
    outlined, the best in red over the others and later ones fading to yellow, upscaled to at least MIN_SIDE px;
    a PNG, written atomically."""
    image = np.asarray(image)
    if image.dtype.kind == "f":
        image = np.clip(image * 255, 0, 255).round()
    picture = Image.fromarray(image.astype(np.uint8)).convert("RGB")
    scale = max(1.0, MIN_SIDE / min(picture.size))
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.NEAREST)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    shown = boxes[:top] * scale
    draw = ImageDraw.Draw(picture)
    for rank in range(len(shown) - 1, -1, -1):  # worst first, so the best ones lie on top
        x1, y1, x2, y2 = shown[rank]
        draw.rectangle((x1, y1, max(x1, x2 - 1), max(y1, y2 - 1)), outline=_rank_colour(rank, len(shown)),
                       width=2 if rank < 10 else 1)
    picture = labelled(picture, f"top {len(shown)} of {len(boxes)} proposals", min_side=MIN_SIDE)
    return atomic_write(Path(path), lambda f: picture.save(f, format="PNG"))


def _rank_colour(rank: int, count: int) -> tuple[int, int, int]:
    """Red for the best proposal, through orange to yellow for the last shown."""
    return 255, round(255 * rank / max(count - 1, 1)), 0
