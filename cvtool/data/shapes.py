"""The embedded synthetic shapes dataset, written in real formats (ImageFolder, VOC devkit, COCO JSON).

Image i of split s is drawn from its own generator `default_rng([seed, s, i])`, so files are byte-identical
for the same parameters whatever the generation order.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import json
import multiprocessing
import os
import shutil
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cvtool.data.identity_glyphs import generate_identities
from cvtool.data.index_png import VOC_PALETTE, voc_palette, write_index_png
from cvtool.data.shapes_draw import SHAPE_CLASSES, Scene, render_scene
from cvtool.data.stick_figures import generate_keypoints
from cvtool.data.synth_words import generate_words
from cvtool.errors import CvtoolError

__all__ = ["SHAPE_CLASSES", "VOC_PALETTE", "voc_palette", "generate_classification", "generate_devkit",
           "ensure_shapes"]

GENERATOR_VERSION = "shapes-2"  # bump whenever the drawing changes, so cached datasets are regenerated
MARKER = ".shapes.json"
SPLITS = ("train", "val")
VOID = 255
VOID_WIDTH = 2  # px, on the background side so labelled pixels equal the visible instance mask
DIFFICULT_AREA = 100  # px; smaller visible objects are marked difficult
MAX_BOX_IOU = 0.2
PARALLEL_MIN_IMAGES = 400  # below this, starting worker processes costs more than it saves
MAX_WORKERS = 8

T = TypeVar("T")
_Job = tuple[int, int, str]  # (split index, image index within the split, output name)


def coco_category_id(label: int) -> int:
    """COCO category id of class index `label`: deliberately non-contiguous, as in real COCO."""
    return 2 * label + 1


def _check_params(image_size: int, min_size: int, max_size: int, counts: dict[str, int]) -> None:
    for name, value in counts.items():
        if value < 0:
            raise CvtoolError(f"shapes {name} must be >= 0, got {value}", fix=f"set {name} to a count >= 0")
    if not 4 <= min_size <= max_size <= image_size:
        raise CvtoolError(f"shapes sizes need 4 <= min_size <= max_size <= image_size, got "
                          f"{min_size}, {max_size}, {image_size}", fix="adjust min_size/max_size/image_size")


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    """A transient rich progress bar on stderr (silent when stderr is not a terminal); yields `advance`."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


def _map_images(work: Callable[[_Job], T], jobs: list[_Job], description: str) -> list[T]:
    """`work(job)` for every job, in order, under a progress bar; spread over processes when worth it."""
    workers = min(len(os.sched_getaffinity(0)), MAX_WORKERS) if hasattr(os, "sched_getaffinity") else 1
    # fork (Linux only), not spawn: spawn re-imports the caller's __main__, which breaks unguarded scripts.
    # The children only run numpy/PIL code, so threads already running in the parent are harmless.
    parallel = (workers > 1 and len(jobs) >= PARALLEL_MIN_IMAGES and sys.platform == "linux"
                and not multiprocessing.current_process().daemon)
    results: list[T] = []
    with progress_bar(description, len(jobs)) as advance, ExitStack() as stack:
        mapper: Callable[..., Iterator[T]] = map
        if parallel:
            pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"))
            stack.callback(pool.shutdown, cancel_futures=True)
            mapper = functools.partial(pool.map, chunksize=32)
        for result in mapper(work, jobs):
            results.append(result)
            advance()
    return results


def _jobs(counts: dict[str, int], name: Callable[[int, int], str]) -> list[_Job]:
    """One job per image: (split index, index within split, output name from `name(offset + i, i)`)."""
    jobs, offset = [], 0
    for split_index, count in enumerate(counts.values()):
        jobs += [(split_index, i, name(offset + i, i)) for i in range(count)]
        offset += count
    return jobs


def _classification_image(root: Path, image_size: int, sizes: tuple[int, int], seed: int, job: _Job) -> None:
    split_index, i, name = job
    scene = render_scene(np.random.default_rng([seed, split_index, i]), image_size, [_label(i)], sizes)
    # noisy images: zlib level 6 would only save ~2% over level 1, at 1.5x the time
    Image.fromarray(scene.image).save(root / SPLITS[split_index] / name, compress_level=1)
    Image.fromarray(scene.masks[0]).convert("1").save(root / "masks" / SPLITS[split_index] / name)


def _label(i: int) -> int:
    return i % len(SHAPE_CLASSES)


def generate_classification(root: Path, *, num_train: int, num_val: int, image_size: int = 64,
                            min_size: int = 12, max_size: int = 48, seed: int = 0) -> Path:
    """ImageFolder `root/<split>/<class>/<class>_<i>.png` (class i % 6), masks under `root/masks/<split>/`."""
    root = Path(root)
    counts = {"num_train": num_train, "num_val": num_val}
    _check_params(image_size, min_size, max_size, counts)
    for split in SPLITS:
        for name in SHAPE_CLASSES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            (root / "masks" / split / name).mkdir(parents=True, exist_ok=True)
    jobs = _jobs(counts, lambda _, i: f"{SHAPE_CLASSES[_label(i)]}/{SHAPE_CLASSES[_label(i)]}_{i:06d}.png")
    work = functools.partial(_classification_image, root, image_size, (min_size, max_size), seed)
    _map_images(work, jobs, "generating shapes (classification)")
    return root


@dataclass(frozen=True)
class _Instance:
    """One annotated object: class index, 0-based inclusive box (x0, y0, x1, y1), visible area, RLE."""

    label: int
    box: tuple[int, int, int, int]
    area: int
    rle: dict[str, Any]

    @property
    def difficult(self) -> bool:
        return self.area < DIFFICULT_AREA


def _instance(label: int, mask: np.ndarray) -> _Instance:
    rows, cols = np.any(mask, axis=1).nonzero()[0], np.any(mask, axis=0).nonzero()[0]
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    box = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
    return _Instance(label, box, int(mask.sum()), rle)


def _voc_xml(image_id: str, size: int, instances: list[_Instance]) -> ET.ElementTree:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "shapes"
    ET.SubElement(root, "filename").text = f"{image_id}.jpg"
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "cvtool synthetic shapes"
    size_el = ET.SubElement(root, "size")
    for tag, value in (("width", size), ("height", size), ("depth", 3)):
        ET.SubElement(size_el, tag).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for inst in instances:
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = SHAPE_CLASSES[inst.label]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(inst.difficult))
        box = ET.SubElement(obj, "bndbox")
        for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), inst.box, strict=True):
            ET.SubElement(box, tag).text = str(value + 1)  # VOC pixels are 1-based, inclusive
    tree = ET.ElementTree(root)
    ET.indent(tree)
    return tree


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square, separably: OR of shifted copies along each axis."""
    h, w = mask.shape
    padded = np.pad(mask, radius)
    rows = np.logical_or.reduce([padded[:, d:d + w] for d in range(2 * radius + 1)])
    return np.logical_or.reduce([rows[d:d + h] for d in range(2 * radius + 1)])


def _segmentation_maps(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(object map, class map): instance index / class + 1 on objects, 0 background, VOID ring around."""
    objects = np.zeros(scene.image.shape[:2], dtype=np.uint8)
    classes = np.zeros_like(objects)
    for index, (label, mask) in enumerate(zip(scene.labels, scene.masks, strict=True), start=1):
        objects[mask], classes[mask] = index, label + 1
    ring = _dilate(objects > 0, VOID_WIDTH) & (objects == 0)
    objects[ring], classes[ring] = VOID, VOID
    return objects, classes


def _devkit_image(root: Path, image_size: int, counts: tuple[int, int], sizes: tuple[int, int], seed: int,
                  job: _Job) -> list[_Instance]:
    """Draw one devkit image, write its JPEG, XML and palette PNGs; return its annotations for the JSON."""
    split_index, i, image_id = job
    rng = np.random.default_rng([seed, split_index, i])
    labels = rng.integers(0, len(SHAPE_CLASSES), rng.integers(counts[0], counts[1] + 1))
    scene = render_scene(rng, image_size, labels, sizes, max_iou=MAX_BOX_IOU)
    instances = [_instance(label, mask) for label, mask in zip(scene.labels, scene.masks, strict=True)]
    Image.fromarray(scene.image).save(root / "JPEGImages" / f"{image_id}.jpg", quality=95)
    _voc_xml(image_id, scene.image.shape[1], instances).write(root / "Annotations" / f"{image_id}.xml")
    objects, classes = _segmentation_maps(scene)
    write_index_png(root / "SegmentationObject" / f"{image_id}.png", objects)
    write_index_png(root / "SegmentationClass" / f"{image_id}.png", classes)
    return instances


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines))


def _write_image_sets(root: Path, records: dict[str, dict[str, list[_Instance]]]) -> None:
    """Main/{split}.txt, Main/<class>_{split}.txt (1 present, 0 only difficult, -1 absent), Segmentation/."""
    records = {**records, "trainval": {**records["train"], **records["val"]}}
    for split, images in records.items():
        _write_lines(root / "ImageSets" / "Main" / f"{split}.txt", list(images))
        _write_lines(root / "ImageSets" / "Segmentation" / f"{split}.txt", list(images))
        for label, name in enumerate(SHAPE_CLASSES):
            lines = []
            for image_id, instances in images.items():
                present = [inst.difficult for inst in instances if inst.label == label]
                flag = -1 if not present else (0 if all(present) else 1)
                lines.append(f"{image_id} {flag:2d}")
            _write_lines(root / "ImageSets" / "Main" / f"{name}_{split}.txt", lines)


def _coco(images: dict[str, list[_Instance]], image_size: int) -> dict[str, Any]:
    coco: dict[str, Any] = {"images": [], "annotations": [], "categories": [
        {"id": coco_category_id(label), "name": name, "supercategory": "shape"}
        for label, name in enumerate(SHAPE_CLASSES)]}
    for image_id, instances in images.items():
        coco["images"].append({"id": int(image_id), "file_name": f"JPEGImages/{image_id}.jpg",
                               "width": image_size, "height": image_size})
        for inst in instances:
            x0, y0, x1, y1 = inst.box
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": int(image_id),
                "category_id": coco_category_id(inst.label),
                "bbox": [float(x0), float(y0), float(x1 + 1 - x0), float(y1 + 1 - y0)],
                "area": inst.area, "iscrowd": 0, "segmentation": inst.rle})
    return coco


def generate_devkit(root: Path, *, num_train: int, num_val: int, image_size: int = 128, min_objects: int = 1,
                    max_objects: int = 4, min_size: int = 12, max_size: int = 48, seed: int = 0) -> Path:
    """VOC devkit (boxes, instance/class palette PNGs, ImageSets) plus COCO instances JSON."""
    root = Path(root)
    counts = {"num_train": num_train, "num_val": num_val}
    _check_params(image_size, min_size, max_size, counts)
    if not 1 <= min_objects <= max_objects:
        raise CvtoolError(f"shapes needs 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}",
                          fix="adjust min_objects/max_objects")
    for sub in ("JPEGImages", "Annotations", "SegmentationObject", "SegmentationClass", "ImageSets/Main",
                "ImageSets/Segmentation", "annotations"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    jobs = _jobs(counts, lambda global_index, _: f"{global_index:06d}")  # ids unique across splits
    work = functools.partial(_devkit_image, root, image_size, (min_objects, max_objects),
                             (min_size, max_size), seed)
    annotations = _map_images(work, jobs, "generating shapes (devkit)")
    records: dict[str, dict[str, list[_Instance]]] = {split: {} for split in SPLITS}
    for (split_index, _, image_id), instances in zip(jobs, annotations, strict=True):
        records[SPLITS[split_index]][image_id] = instances
    _write_image_sets(root, records)
    for split, images in records.items():
        with open(root / "annotations" / f"instances_{split}.json", "w") as f:
            json.dump(_coco(images, image_size), f, separators=(",", ":"))
    return root


_GENERATORS: dict[str, Callable[..., Path]] = {
    "classification": generate_classification, "devkit": generate_devkit, "keypoints": generate_keypoints,
    "identities": generate_identities, "words": generate_words}


def _marker(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Full parameters (defaults applied) of a generation, as stored in `root/.shapes.json`."""
    if kind not in _GENERATORS:
        raise CvtoolError(f"unknown shapes dataset kind {kind!r}", fix=f"use one of {sorted(_GENERATORS)}")
    signature = inspect.signature(_GENERATORS[kind])
    try:
        bound = signature.bind(None, **params)
    except TypeError as exc:
        valid = [name for name in signature.parameters if name != "root"]
        raise CvtoolError(f"bad shapes parameters for {kind}: {exc}", fix=f"valid: {valid}") from None
    bound.apply_defaults()
    full = {name: value for name, value in bound.arguments.items() if name != "root"}
    return {"version": GENERATOR_VERSION, "kind": kind, "params": full}


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created with its folder if missing)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")
    except PermissionError as exc:
        raise CvtoolError("cannot write the shapes dataset", where=str(path.parent),
                          fix="point the dataset root at a writable directory") from exc
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _generate_atomically(kind: str, root: Path, marker: dict[str, Any]) -> None:
    """Generate into a temporary sibling, then swap it into place; call only while holding the lock."""
    if root.exists() and not (root / MARKER).exists() and any(root.iterdir()):
        raise CvtoolError("refusing to overwrite a directory that is not a generated shapes dataset",
                          where=str(root), fix="remove it or point the dataset root elsewhere")
    for stale in root.parent.glob(f".{root.name}.tmp-*"):  # left by a killed generator
        shutil.rmtree(stale)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    old = root.parent / f".{root.name}.tmp-{os.getpid()}-old"
    try:
        _GENERATORS[kind](tmp, **marker["params"])
        (tmp / MARKER).write_text(json.dumps(marker, sort_keys=True, indent=2))
        if root.exists():
            os.replace(root, old)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def ensure_shapes(kind: str, root: Path, **params: Any) -> Path:
    """Generate the `kind` shapes dataset ("classification" or "devkit") at `root` unless it already holds
    one made with the same parameters. Atomic and safe against concurrent callers (e.g. DDP ranks)."""
    root = Path(root)
    marker = _marker(kind, params)
    if _read_marker(root) == marker:
        return root
    with _locked(root.parent / f".{root.name}.lock"):
        if _read_marker(root) != marker:  # another process may have generated it while we waited
            _generate_atomically(kind, root, marker)
    return root
