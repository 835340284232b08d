"""PASCAL VOC devkit detection result files: <dir>/comp4_det_<split>_<class>.txt (comp3_ accepted), one line per
detection `<image_id> <score> <xmin> <ymin> <xmax> <ymax>` in 1-based pixel coordinates, any order."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write_text

from .voc_annotations import read_text_lines

RESULT_FILE = re.compile(r"^comp[34]_det_(?P<rest>.+)\.txt$")


def result_files(directory: str | Path, split: str, class_names: list[str]) -> dict[str, Path]:
    """class name -> its result file in `directory` (classes without a file have no detections)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CvtoolError("VOC results directory not found", where=str(directory),
                          fix="pass predictions= a directory of comp4_det_<split>_<class>.txt files")
    found: dict[str, Path] = {}
    other_splits = set()
    for path in sorted(directory.iterdir()):
        match = RESULT_FILE.match(path.name)
        if not match:
            continue
        if not match["rest"].startswith(f"{split}_"):
            other_splits.add(match["rest"].rsplit("_", 1)[0])
            continue
        name = match["rest"][len(split) + 1:]
        if name not in class_names:
            raise CvtoolError(f"result file for unknown class {name!r}", where=str(path),
                              fix=f"classes are {', '.join(class_names)}; rename the file or set dataset.classes")
        if name in found:
            raise CvtoolError(f"two result files for class {name!r} ({found[name].name}, {path.name})",
                              where=str(directory), fix="keep one of comp3_/comp4_ per class")
        found[name] = path
    if not found:
        hint = (f"it holds results for split {', '.join(sorted(other_splits))}: pass dataset.split=..."
                if other_splits else f"expected comp4_det_{split}_<class>.txt files")
        raise CvtoolError(f"no VOC result files for split {split!r}", where=str(directory), fix=hint)
    return found


def _bad_line(path: Path, number: int, problem: str) -> CvtoolError:
    return CvtoolError(problem, where=f"{path}:{number}",
                       fix="each line must be `<image_id> <score> <xmin> <ymin> <xmax> <ymax>`")


def read_result_file(path: Path, image_index: dict[str, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image index, score, box (N, 4)) of one class's result file, in file order."""
    lines = read_text_lines(path, "a VOC result file")
    numbered = [(n, line.split()) for n, line in enumerate(lines, start=1)]
    numbered = [(n, fields) for n, fields in numbered if fields]
    for n, fields in numbered:
        if len(fields) != 6:
            raise _bad_line(path, n, f"{len(fields)} fields instead of 6")
    images = [image_index.get(fields[0], -1) for _, fields in numbered]
    if -1 in images:
        n, fields = numbered[images.index(-1)]
        raise CvtoolError(f"image id {fields[0]!r} is not in the evaluated split", where=f"{path}:{n}",
                          fix="evaluate the split the detections were made on (dataset.split=...)")
    try:
        values = np.array([fields[1:] for _, fields in numbered], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        for n, fields in numbered:
            try:
                [float(v) for v in fields[1:]]
            except ValueError:
                raise _bad_line(path, n, f"not a number in {' '.join(fields[1:])!r}") from None
        raise
    bad = ~np.isfinite(values).all(axis=1) | (values[:, 3] < values[:, 1]) | (values[:, 4] < values[:, 2])
    if bad.any():
        n, fields = numbered[int(np.flatnonzero(bad)[0])]
        raise _bad_line(path, n, f"non-finite value or xmax < xmin / ymax < ymin: {' '.join(fields)!r}")
    return np.array(images, dtype=np.int64), values[:, 0], values[:, 1:]


def write_result_files(directory: str | Path, split: str, class_names: list[str], image_ids: list[str],
                       image: np.ndarray, label: np.ndarray, scores: np.ndarray, boxes: np.ndarray) -> list[Path]:
    """comp4_det_<split>_<class>.txt for every class (empty when no detections), in the given order, numbers
    written exactly (shortest round-trip repr) so evaluating the files equals evaluating the arrays."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, name in enumerate(class_names):
        rows = np.flatnonzero(label == k)
        lines = [" ".join([image_ids[image[i]], repr(float(scores[i])), *(repr(float(v)) for v in boxes[i])])
                 for i in rows]
        path = directory / f"comp4_det_{split}_{name}.txt"
        atomic_write_text(path, "".join(f"{line}\n" for line in lines))
        paths.append(path)
    return paths
