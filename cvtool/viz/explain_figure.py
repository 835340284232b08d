"""Pictures of attribution maps: the map as a heat-map PNG, and one composite figure a person reads at a glance
(input | map | overlay, plus the signed per-channel map where the method has one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from cvtool.utils.atomic import atomic_write


def heat(map_: np.ndarray) -> np.ndarray:
    """H x W -> H x W x 3 in [0, 1] with matplotlib's `inferno` (min-max scaled)."""
    from matplotlib import colormaps

    low, high = float(map_.min()), float(map_.max())
    return colormaps["inferno"]((map_ - low) / (high - low) if high > low else np.zeros_like(map_))[..., :3]


def save_png(path: Path, rgb: np.ndarray) -> Path:
    """An H x W (x 3) float image in [0, 1] as an 8-bit PNG, written atomically."""
    image = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, top: float = 1.0) -> Path:
    """Lay out (the axes below `top`, a fraction of the height: room for a suptitle), write atomically as PNG, and
    close `fig`."""
    fig.tight_layout(rect=(0, 0, 1, top))
    try:
        return atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        fig.clf()
        pyplot().close(fig)


def save_pair(directory: Path, stem: str, array: np.ndarray, picture: np.ndarray) -> None:
    """`<stem>.npy` (float32 `array`) and `<stem>.png` (`picture` in [0, 1]) in `directory`, both atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / f"{stem}.npy", lambda f: np.save(f, np.asarray(array, dtype=np.float32)))
    save_png(directory / f"{stem}.png", picture)


def composite(path: Path, images: np.ndarray, maps: np.ndarray, titles: list[str], method: str,
              raw: np.ndarray | None = None, alpha: float = 0.5) -> Path:
    """One row per image: input | map | overlay (| signed map). images: B x H x W x 3 uint8; maps: B x H x W."""
    plt = pyplot()
    columns = ["input", method, "overlay"] + (["signed, per channel"] if raw is not None else [])
    fig, axes = plt.subplots(len(images), len(columns), figsize=(2.4 * len(columns), 2.4 * len(images)),
                             squeeze=False)
    for row, (image, map_, title) in enumerate(zip(images, maps, titles)):
        picture = image.astype(np.float32) / 255
        panels = [picture, heat(map_), (1 - alpha) * picture + alpha * heat(map_)]
        if raw is not None:
            signed = raw[row].transpose(1, 2, 0)
            panels.append(0.5 + 0.5 * signed / max(float(np.abs(signed).max()), 1e-12))
        for col, panel in enumerate(panels):
            axes[row, col].imshow(np.clip(panel.squeeze(), 0, 1), cmap="gray" if panel.ndim == 2 else None)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
            if row == 0:
                axes[row, col].set_title(columns[col], fontsize=9)
        axes[row, 0].set_ylabel(title, fontsize=8)
    return save_figure(fig, path)


def adversarial_figure(path: Path, clean: np.ndarray, adversarial: np.ndarray, clean_titles: list[str],
                       adversarial_titles: list[str], epsilon: float) -> Path:
    """One row per image: clean | adversarial | perturbation amplified to the full range. Images B x H x W x C in
    [0, 1]."""
    plt = pyplot()
    fig, axes = plt.subplots(len(clean), 3, figsize=(7.5, 2.5 * len(clean)), squeeze=False)
    for row in range(len(clean)):
        delta = 0.5 + 0.5 * (adversarial[row] - clean[row]) / max(epsilon, 1e-12)
        for col, (panel, title) in enumerate(((clean[row], clean_titles[row]),
                                              (adversarial[row], adversarial_titles[row]),
                                              (delta, f"perturbation x{0.5 / max(epsilon, 1e-12):.0f}"))):
            axes[row, col].imshow(np.clip(panel.squeeze(), 0, 1), cmap="gray" if panel.shape[-1] == 1 else None)
            axes[row, col].set_title(title, fontsize=8)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    return save_figure(fig, path)


def accuracy_plot(path: Path, epsilons: list[float], accuracy: list[float], attack: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epsilons, accuracy, marker="o")
    ax.set_xlabel("epsilon (pixel units, L-inf)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"{attack.upper()}: accuracy vs epsilon")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)
