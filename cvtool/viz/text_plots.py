"""Pictures of a text recogniser: which input columns each CTC frame reads (alignment), a saliency map over a word,
and a word crop captioned with what was read. Inputs are numpy arrays (no torch here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cvtool.metrics.text import normalise
from cvtool.viz.explain_figure import heat, pyplot, save_figure

BLANK_MARK = "-"  # how the CTC blank (class 0) is written in figures
SHOWN_PROBABILITY = 0.05  # heat-map rows: classes reaching this probability in some frame (or some frame's argmax)
CHAR_SHADE, BLANK_GREY = "#1f77b4", "#8c8c8c"
RIGHT, WRONG = "#2ca02c", "#d62728"
STRIP_HEIGHT, STRIP_FONT = 30, 20  # overlay_word's caption strip (px) and its font size


def frame_labels(probs: np.ndarray, charset: str) -> list[str]:
    """Each frame's most probable class as its character, "" for the blank (class 0); ties go to the lower class
    (argmax), as greedy CTC decoding reads them."""
    probs = _checked(probs, charset)
    return ["" if k == 0 else charset[k - 1] for k in probs.argmax(axis=1)]


def shown_classes(probs: np.ndarray, threshold: float = SHOWN_PROBABILITY) -> np.ndarray:
    """Ascending class indices worth a heat-map row: those above `threshold` in some frame, plus every frame's
    most probable class (so a flat frame still shows what it emitted)."""
    probs = np.asarray(probs, dtype=np.float64)
    keep = probs.max(axis=0) > threshold
    keep[probs.argmax(axis=1)] = True
    return np.flatnonzero(keep)


def alignment_figure(path: Path, image: np.ndarray, probs: np.ndarray, charset: str, text: str,
                     target: str | None = None) -> Path:
    """Top: the word image cut into T equal column bands (frame f covers input columns [f W/T, (f+1) W/T)), each
    band labelled with the character its frame emits (shaded) or a grey "-" for the blank. Bottom: the T x K
    per-frame probabilities (`probs`, softmax per frame) as a heat map, rows of `shown_classes` only. Title: the
    predicted `text`, and `target` when given (green when they agree ignoring case and symbols, red otherwise)."""
    rgb, labels = _rgb(image), frame_labels(probs, charset)
    probs = np.asarray(probs, dtype=np.float64)
    (height, width), frames, rows = rgb.shape[:2], len(probs), shown_classes(probs)
    top, bottom = float(np.clip(10 * height / width, 1.0, 3.5)), 0.6 + 0.17 * len(rows)
    plt = pyplot()
    fig = plt.figure(figsize=(10.4, top + bottom + 1.1))
    grid = fig.add_gridspec(2, 2, height_ratios=[top, bottom], width_ratios=[60, 1])
    word, probabilities, bar = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    fig.add_subplot(grid[0, 1]).axis("off")
    _frame_bands(word, rgb, labels)
    shown = probabilities.imshow(probs[:, rows].T, aspect="auto", cmap="viridis", vmin=0, vmax=1,
                                 interpolation="nearest")
    names = [BLANK_MARK, *charset]
    probabilities.set_yticks(range(len(rows)), [names[k] for k in rows], fontsize=8)
    step = max(1, frames // 40)
    probabilities.set_xticks(range(0, frames, step))
    probabilities.tick_params(axis="x", labelsize=8)
    probabilities.set_xlabel(f"output frame (of {frames}; {width / frames:g} input columns each)")
    probabilities.set_title(f"per-frame class probabilities ({BLANK_MARK} = CTC blank; classes reaching "
                            f"{SHOWN_PROBABILITY:g} or a frame's best)", fontsize=9)
    fig.colorbar(shown, cax=bar)
    title = f'prediction "{text}"'
    colour = "black"
    if target is not None:
        title += f'   target "{target}"'
        agree = normalise(text, "ignore_case_symbol") == normalise(target, "ignore_case_symbol")
        colour = RIGHT if agree else WRONG
    fig.suptitle(title, color=colour, fontsize=11)
    return save_figure(fig, path, top=1 - 0.45 / fig.get_figheight())


def _frame_bands(ax, rgb: np.ndarray, labels: list[str]) -> None:
    """The image with one band per frame: character frames shaded and labelled above, blank frames a grey mark."""
    height, width = rgb.shape[:2]
    band = width / len(labels)
    ax.imshow(rgb, extent=(0, width, height, 0), aspect="auto", interpolation="nearest")
    for f, label in enumerate(labels):
        if label:
            ax.axvspan(f * band, (f + 1) * band, color=CHAR_SHADE, alpha=0.3, linewidth=0)
        if f:
            ax.axvline(f * band, color="white", linewidth=0.5, alpha=0.5)
    ax.set_xlim(0, width)
    ax.xaxis.tick_top()
    ax.set_xticks((np.arange(len(labels)) + 0.5) * band, [label or BLANK_MARK for label in labels])
    for tick, label in zip(ax.get_xticklabels(), labels):
        tick.set(color="black" if label else BLANK_GREY, fontweight="bold" if label else "normal",
                 fontsize=11 if label else 8)
    ax.tick_params(axis="x", length=0, pad=2)
    ax.set_yticks([])


def saliency_figure(path: Path, image: np.ndarray, saliency: np.ndarray, title: str) -> Path:
    """The word image above its saliency map (inferno, min-max scaled) laid half-transparent over it; a map of
    another size is resized (bilinear) to the image's."""
    rgb = _rgb(image).astype(np.float64) / 255
    height, width = rgb.shape[:2]
    map_ = np.asarray(saliency, dtype=np.float32)
    if map_.shape != (height, width):
        map_ = np.asarray(Image.fromarray(map_).resize((width, height), Image.BILINEAR))
    panel = float(np.clip(8 * height / width, 0.8, 4.0))
    plt = pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(8, 2 * panel + 1.2))
    for ax, picture, name in ((axes[0], rgb, "input"), (axes[1], 0.5 * rgb + 0.5 * heat(map_), "saliency")):
        ax.imshow(np.clip(picture, 0, 1), interpolation="nearest")
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, top=1 - 0.4 / fig.get_figheight())


def overlay_word(image: Image.Image | np.ndarray, text: str, score: float | None = None,
                 min_height: int = 64) -> Image.Image:
    """The word crop (upscaled, bicubic, to at least `min_height` px) above a dark strip of STRIP_HEIGHT px with the
    recognised text (and score); the picture widens when the caption is wider than the crop."""
    crop = (image if isinstance(image, Image.Image) else Image.fromarray(_rgb(image))).convert("RGB")
    scale = max(1.0, min_height / crop.height)
    if scale > 1:
        crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.BICUBIC)
    caption = (text or "(nothing read)") + ("" if score is None else f"   {score:.2f}")
    font = _font(STRIP_FONT)
    left, top, right, bottom = ImageDraw.Draw(crop).textbbox((0, 0), caption, font=font)
    picture = Image.new("RGB", (max(crop.width, right - left + 12), crop.height + STRIP_HEIGHT), (0, 0, 0))
    picture.paste(crop, (0, 0))
    y = crop.height + (STRIP_HEIGHT - (bottom - top)) // 2 - top  # centred in the strip
    ImageDraw.Draw(picture).text((6 - left, y), caption, fill=(255, 255, 255), font=font)
    return picture


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError):  # Pillow < 10.1 or without FreeType: the small bitmap font
        return ImageFont.load_default()


def _rgb(image: np.ndarray) -> np.ndarray:
    """A uint8 H x W x 3 array from H x W, H x W x 1 or H x W x 3 (floats taken as [0, 1])."""
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = (np.clip(array.astype(np.float64), 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in (1, 3):
        raise ValueError(f"expected an H x W (x 1 or 3) image, got shape {np.shape(image)}")
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def _checked(probs: np.ndarray, charset: str) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(charset) + 1:
        raise ValueError(f"expected T x {len(charset) + 1} frame probabilities (blank + charset), "
                         f"got shape {probs.shape}")
    return probs
