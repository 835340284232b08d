"""Write real small-image datasets bundled with scikit-learn / scikit-image as ImageFolders of grayscale PNGs, to
measure `dataset=imagefolder` on data like a user's own folder (docs/data.md):

- digits: scikit-learn's 1,797 handwritten digits, 8x8 (values 0..16 -> 0..255), 10 classes;
- faces: scikit-image's `lfw_subset`, 100 LFW face crops and 100 non-face patches, 25x25, 2 classes.

Both as ROOT/train/<class>/*.png and ROOT/val/<class>/*.png, a seeded stratified 80/20 split.

    python benchmarks/small_image_folders.py digits /tmp/digits_png
    cvtool train model=lenet5 dataset=imagefolder dataset.root=/tmp/digits_png
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.model_selection import train_test_split


def digits() -> tuple[np.ndarray, list[str]]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.rint(data.images * (255 / 16)).astype(np.uint8), [str(t) for t in data.target]


def faces() -> tuple[np.ndarray, list[str]]:
    from skimage.data import lfw_subset

    images = lfw_subset()  # the first 100 are faces
    return np.rint(images * 255).astype(np.uint8), ["face"] * 100 + ["nonface"] * (len(images) - 100)


def write_folder(images: np.ndarray, labels: list[str], root: Path, seed: int = 0) -> Path:
    train, val = train_test_split(np.arange(len(images)), test_size=0.2, stratify=labels, random_state=seed)
    for split, part in (("train", train), ("val", val)):
        for index in part:
            folder = root / split / labels[index]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[index], mode="L").save(folder / f"{index:04d}.png")
    return root


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "digits"
    print(write_folder(*{"digits": digits, "faces": faces}[name](),
                       Path(sys.argv[2] if len(sys.argv) > 2 else f"datasets/{name}_png")))
