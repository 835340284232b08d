"""Where a split's region proposals come from: a method (selective search, edge boxes, the fixed k-means set of
"R-CNN minus R") computed once and cached under the dataset root, or a file in one of the three formats users have.
No torch."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cvtool.data.proposal_files import ProposalSet, read_proposals, write_proposals
from cvtool.errors import CvtoolError

log = logging.getLogger("cvtool.proposals")

METHODS = ("selective_search", "edge", "kmeans")


def is_method(spec: str) -> bool:
    return spec in METHODS


def image_sizes(items: Sequence) -> list[tuple[int, int] | None]:
    """(width, height) per detection item, where its annotations give it."""
    return [tuple(item.size) if item.size else None for item in items]


def normalised_boxes(items: Sequence) -> np.ndarray:
    """The items' object boxes as (M, 4) normalised (cx, cy, w, h), the space Lenc & Vedaldi cluster in."""
    rows = []
    for item in items:
        if len(item.boxes) == 0:
            continue
        width, height = item.size or _decoded_size(item.file)
        b = np.asarray(item.boxes, dtype=np.float64)
        rows.append(np.stack([(b[:, 0] + b[:, 2]) / 2 / width, (b[:, 1] + b[:, 3]) / 2 / height,
                              (b[:, 2] - b[:, 0]) / width, (b[:, 3] - b[:, 1]) / height], 1))
    return np.concatenate(rows) if rows else np.zeros((0, 4))


def _decoded_size(file: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(file) as image:
        return image.size


def compute(method: str, items: Sequence, *, options: dict, train_items: Sequence | None = None,
            jobs: int = 1) -> ProposalSet:
    """`method`'s proposals for every item (kmeans: the training boxes' clusters, the same normalised set placed in
    every image)."""
    from cvtool.data import proposal_methods as pm

    ids = [str(item.image_id) for item in items]
    if method == "kmeans":
        if train_items is None:
            raise CvtoolError("kmeans proposals need the training boxes", where="proposals.method=kmeans",
                              fix="compute them with the dataset's training split available")
        centres = pm.kmeans_boxes(normalised_boxes(train_items), int(options["k"]), seed=int(options["seed"]))
        boxes = [pm.fixed_proposals(centres, *(item.size or _decoded_size(item.file))) for item in items]
        return ProposalSet(ids, boxes, [None] * len(items), f"kmeans (k={options['k']})")
    if method not in METHODS:
        raise CvtoolError(f"unknown proposal method {method!r}", where="proposals.method",
                          fix=f"use one of {', '.join(METHODS)}, or a proposal file")
    kwargs = {"max_proposals": int(options["max_proposals"])}
    if method == "selective_search":
        kwargs["mode"] = options["mode"]
    found = pm.propose_images(method, [item.file for item in items], jobs=jobs, **kwargs)
    return ProposalSet(ids, [np.asarray(b, dtype=np.float32) for b, _ in found], [s for _, s in found], method)


def method_key(method: str, options: dict) -> dict:
    """The options that change `method`'s proposals (the cache key)."""
    keys = {"selective_search": ("mode", "max_proposals"), "edge": ("max_proposals",), "kmeans": ("k", "seed")}
    return {k: options[k] for k in keys[method]}


def cached(method: str, items: Sequence, *, split: str, cache_dir: Path, options: dict,
           train_items: Sequence | None = None, jobs: int = 1) -> ProposalSet:
    """`compute`, stored once as a detectron2 pickle under `cache_dir` and read back on later runs (recomputed when
    the split's images or the method's options change)."""
    ids = [str(item.image_id) for item in items]
    digest = hashlib.sha1(json.dumps([method_key(method, options), ids, _train_key(method, train_items)],
                                     default=str).encode()).hexdigest()[:10]
    path = Path(cache_dir) / f"{split}.{method}.{digest}.pkl"
    if path.is_file():
        return read_proposals(path, ids, image_sizes(items))
    log.info("computing %s proposals for %d images of %s (cached in %s)", method, len(items), split, path)
    found = compute(method, items, options=options, train_items=train_items, jobs=jobs)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_proposals(path, found, "detectron2")
    return found


def _train_key(method: str, train_items: Sequence | None) -> list | None:
    if method != "kmeans" or train_items is None:
        return None
    return [len(train_items), float(sum(np.asarray(it.boxes).sum() for it in train_items))]


def from_file(pattern: str, items: Sequence, split: str) -> ProposalSet:
    """A proposal file for the split: `pattern` may hold `{split}` (e.g. voc_2007_{split}.mat)."""
    path = Path(str(pattern).replace("{split}", split)).expanduser()
    if not path.is_file():
        raise CvtoolError(f"no proposal file {path}", where="model.proposals",
                          fix="give a .mat / .pkl proposal file (its {split} is replaced by the split), or a method: "
                              + ", ".join(METHODS) + " (`cvtool data proposals` writes one)")
    return read_proposals(path, [str(item.image_id) for item in items], image_sizes(items))


def attach(items: Sequence, proposals: ProposalSet, limit: int | None) -> None:
    """Give each item its first `limit` proposals (all when None)."""
    for item, boxes in zip(items, proposals.boxes):
        item.proposals = np.asarray(boxes[:limit], dtype=np.float32)
