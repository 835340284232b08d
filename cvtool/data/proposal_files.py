"""Region proposal files in the three formats users' tools read, checked against the split they belong to. No torch.

- Fast R-CNN `.mat`: `boxes`, a 1 x N cell of n x 4 `[y1 x1 y2 x2]` 1-based inclusive pixel boxes in image-set
  order; optional `images` (cell of image ids) and `scores` (cell of n-vectors).
- detectron2 pickle: a dict `ids`, `boxes` (n x 4 XYXY), `objectness_logits` (n), `bbox_mode` (BoxMode.XYXY_ABS = 0);
  detectron2's older key names `indexes` / `scores` are read too.
- MMDetection pickle (`proposal_file` of mmdet 2.x): a list in dataset order of n x 4 or n x 5 `[x1 y1 x2 y2 (score)]`.

Inside cvtool proposals are float32 XYXY continuous 0-based pixels, ranked best first (file order is kept). A
pickle is read with an unpickler that only rebuilds numpy arrays and plain containers: a proposal file cannot run code.
"""

from __future__ import annotations

import pickle
import pickletools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cvtool.errors import CvtoolError
from cvtool.utils.atomic import atomic_write

FORMATS = ("mat", "detectron2", "mmdet")
PICKLE_SUFFIXES = (".pkl", ".pickle")
XYXY_ABS = 0  # detectron2.structures.BoxMode.XYXY_ABS
SLACK = 1.0  # px a box may reach outside its image before it counts as out of bounds (rounding, 1-based files)
ORDER = {"mat": "[y1 x1 y2 x2] (1-based)", "detectron2": "[x1 y1 x2 y2]", "mmdet": "[x1 y1 x2 y2]"}
SWAPPED = {"mat": "[x1 y1 x2 y2]", "detectron2": "[y1 x1 y2 x2]", "mmdet": "[y1 x1 y2 x2]"}
LAYOUT = {"mat": "a 1 x N cell 'boxes' of n x 4 [y1 x1 y2 x2] 1-based arrays (Fast R-CNN)",
          "detectron2": "a dict with 'ids', 'boxes' (n x 4 XYXY_ABS), 'objectness_logits' and 'bbox_mode' = 0",
          "mmdet": "a list (one per image, split order) of n x 4 or n x 5 [x1 y1 x2 y2 (score)] arrays"}


@dataclass
class ProposalSet:
    """Ranked proposals of a split: per image (in `ids` order) float32 (n, 4) XYXY continuous 0-based boxes and
    their scores (None where the source has none); `source` names the file or method in messages."""

    ids: list[str]
    boxes: list[np.ndarray]
    scores: list[np.ndarray | None]
    source: str


def proposal_format(path: Path, fmt: str = "auto") -> str:
    """The format of a proposal file: `fmt` unless "auto"; else .mat -> "mat", and a .pkl/.pickle holding a list
    -> "mmdet", any other (a dict, or a file not written yet) -> "detectron2"."""
    path = Path(path)
    if fmt != "auto":
        if fmt not in FORMATS:
            raise CvtoolError(f"unknown proposal file format {fmt!r}", where="format",
                              fix=f"use auto or one of {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return "mat"
    if suffix in PICKLE_SUFFIXES:
        return "mmdet" if path.is_file() and _pickled_container(path) == "list" else "detectron2"
    raise CvtoolError(f"cannot tell the proposal format of {path.name!r} from its suffix", where=str(path),
                      fix=f"name it .mat or .pkl, or pass format= one of {', '.join(FORMATS)}")


def _pickled_container(path: Path) -> str | None:
    """"list" or "dict" for the object at the top of a pickle, from its first opcodes (nothing is unpickled)."""
    containers = {"EMPTY_LIST": "list", "LIST": "list", "EMPTY_DICT": "dict", "DICT": "dict"}
    try:
        with open(path, "rb") as f:
            for opcode, _, _ in pickletools.genops(f):
                if opcode.name in containers:
                    return containers[opcode.name]
                if opcode.name not in ("PROTO", "FRAME", "MARK"):
                    return None
    except (ValueError, OSError, EOFError):
        return None
    return None


# ---------------------------------------------------------------------------------------------------- writing


def write_proposals(path: Path, proposals: ProposalSet, fmt: str = "auto") -> Path:
    """Write `proposals` atomically in `fmt` (see `proposal_format`); returns `path`. Scores are stored only where
    every image has them (detectron2 needs objectness logits: without scores, minus the rank is written)."""
    path = Path(path)
    fmt = proposal_format(path, fmt)
    boxes = _checked_for_writing(proposals)
    scores = proposals.scores if all(s is not None for s in proposals.scores) else None
    if fmt == "mat":
        return atomic_write(path, lambda f: _save_mat(f, proposals.ids, boxes, scores))
    if fmt == "detectron2":
        logits = scores or [-np.arange(len(b), dtype=np.float32) for b in boxes]
        data = {"ids": list(proposals.ids), "boxes": boxes, "bbox_mode": XYXY_ABS,
                "objectness_logits": [np.asarray(s, dtype=np.float32).reshape(-1) for s in logits]}
    else:
        data = boxes if scores is None else [np.concatenate([b, np.asarray(s, np.float32).reshape(-1, 1)], axis=1)
                                             for b, s in zip(boxes, scores)]
    return atomic_write(path, lambda f: pickle.dump(data, f, protocol=4))


def _checked_for_writing(proposals: ProposalSet) -> list[np.ndarray]:
    if not len(proposals.ids) == len(proposals.boxes) == len(proposals.scores):
        raise ValueError(f"{len(proposals.ids)} ids, {len(proposals.boxes)} box arrays, {len(proposals.scores)} "
                         "score arrays: one of each per image")
    boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in proposals.boxes]
    for image_id, b, s in zip(proposals.ids, boxes, proposals.scores):
        if len(b) == 0:
            raise CvtoolError(f"no proposals for image {image_id}", where=proposals.source,
                              fix="every image needs at least one proposal (check the method's options)")
        if s is not None and np.size(s) != len(b):
            raise ValueError(f"image {image_id}: {np.size(s)} scores for {len(b)} proposals")
    return boxes


def _save_mat(f, ids: list[str], boxes: list[np.ndarray], scores: list[np.ndarray] | None) -> None:
    from scipy.io import savemat

    def cell(arrays: list) -> np.ndarray:
        out = np.empty((1, len(arrays)), dtype=object)
        for k, array in enumerate(arrays):  # one by one: numpy would stack equal-shaped arrays
            out[0, k] = array
        return out

    # continuous (x1, y1, x2, y2) -> 1-based inclusive [y1 x1 y2 x2]: y1 + 1, x1 + 1, y2, x2
    mat_boxes = [b.astype(np.float64)[:, (1, 0, 3, 2)] + np.array([1.0, 1.0, 0.0, 0.0]) for b in boxes]
    data = {"boxes": cell(mat_boxes), "images": cell([str(i) for i in ids])}
    if scores is not None:
        data["scores"] = cell([np.asarray(s, dtype=np.float64).reshape(-1, 1) for s in scores])
    savemat(f, data, do_compression=True)


# ---------------------------------------------------------------------------------------------------- reading


def read_proposals(path: Path, ids: list[str], sizes: list[tuple[int, int] | None], fmt: str = "auto") -> ProposalSet:
    """The proposals of a file, aligned to the split's image `ids` with (width, height) `sizes` (None: unknown).
    Refuses, naming the file and the image: a missing/unreadable/malformed file, an image count or order (where the
    file has ids) that differs from the split, an image without proposals, inverted boxes and boxes reaching more
    than 1 px outside their image (x/y swapped)."""
    path = Path(path)
    if len(sizes) != len(ids):
        raise ValueError(f"{len(ids)} ids but {len(sizes)} sizes")
    if not path.is_file():
        raise CvtoolError("proposal file not found", where=str(path), fix="check the path")
    fmt = proposal_format(path, fmt)
    if fmt == "mat":
        file_ids, entries, raw_scores = _load_mat(path)
    else:
        data = _load_pickle(path)
        file_ids, entries, raw_scores = (_from_detectron2 if fmt == "detectron2" else _from_mmdet)(data, path)
    _check_alignment(path, file_ids, len(entries), ids)
    boxes, scores = [], []
    for index, image_id in enumerate(ids):
        where = _where(path, index, image_id)
        array = stored = _numeric(entries[index], where, fmt)
        score = array[:, 4] if array.shape[1] == 5 else raw_scores[index]
        if fmt == "mat":  # 1-based inclusive [y1 x1 y2 x2] -> continuous 0-based x1 y1 x2 y2
            array = array[:, (1, 0, 3, 2)] - np.array([1.0, 1.0, 0.0, 0.0])
        boxes.append(_checked_boxes(array[:, :4], stored[:, :4], sizes[index], fmt, where))
        scores.append(None if score is None else _checked_scores(score, len(array), where))
    return ProposalSet(list(ids), boxes, scores, str(path))


def _where(path: Path, index: int, image_id: str) -> str:
    return f"{path} [image {image_id}, #{index}]"


def _malformed(path: Path, what: str, fmt: str) -> CvtoolError:
    return CvtoolError(f"not a {fmt} proposal file: {what}", where=str(path), fix=f"it should hold {LAYOUT[fmt]}")


# Loaders: (image ids or None, the raw per-image box entries, the raw per-image scores or Nones), unchecked.

def _load_mat(path: Path) -> tuple[list[str] | None, list, list]:
    from scipy.io import loadmat

    try:
        data = loadmat(path)
    except Exception as err:  # scipy raises many kinds (ValueError, MatReadError, NotImplementedError for v7.3, ...)
        raise CvtoolError(f"not a readable MATLAB .mat file ({type(err).__name__}: {err})", where=str(path),
                          fix="save it with scipy.io.savemat or MATLAB's save -v7") from None
    if "boxes" not in data:
        keys = ", ".join(k for k in data if not k.startswith("__")) or "none"
        raise CvtoolError(f"the .mat file has no 'boxes' variable (its variables: {keys})", where=str(path),
                          fix=f"a Fast R-CNN proposal file holds {LAYOUT['mat']}")
    boxes = _cells(data["boxes"], path, "boxes")
    ids = [_mat_string(c) for c in _cells(data["images"], path, "images")] if "images" in data else None
    scores = _cells(data["scores"], path, "scores") if "scores" in data else [None] * len(boxes)
    if len(scores) != len(boxes):
        raise _malformed(path, f"{len(scores)} 'scores' cells for {len(boxes)} 'boxes' cells", "mat")
    return ids, boxes, scores


def _cells(value: np.ndarray, path: Path, name: str) -> list:
    if not isinstance(value, np.ndarray) or value.dtype != object:
        raise _malformed(path, f"'{name}' is a {getattr(value, 'dtype', type(value))} matrix, not a cell array",
                         "mat")
    return list(value.ravel())


def _mat_string(cell) -> str:
    """An image id from a .mat cell: a char array, or a number (COCO ids)."""
    values = np.asarray(cell).ravel()
    if values.dtype.kind in "US":
        return "".join(str(v) for v in values)
    return str(int(values[0])) if values.size == 1 and float(values[0]).is_integer() else str(values.tolist())


class _ArrayUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and scalars (numpy 1.x and 2.x module names) and builtin containers only; a
    pickled detectron2 BoxMode becomes its int value."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
               *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct",
                                                                                                "scalar")),
               *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core"))}

    def find_class(self, module: str, name: str):
        if (module, name) == ("detectron2.structures.boxes", "BoxMode"):
            return int  # an IntEnum pickles as BoxMode(value)
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it references {module}.{name}, which is not part of a numpy array")
        return super().find_class(module, name)


def _load_pickle(path: Path):
    try:
        with open(path, "rb") as f:
            return _ArrayUnpickler(f, encoding="latin1").load()  # latin1: Python 2 pickles (Detectron1 files)
    except Exception as err:  # a corrupt pickle can raise nearly anything
        raise CvtoolError(f"not a readable proposal pickle ({type(err).__name__}: {err})", where=str(path),
                          fix="pass a detectron2 proposal dict or an MMDetection list, of numpy arrays") from None


def _from_detectron2(data, path: Path) -> tuple[list[str], list, list]:
    if not isinstance(data, dict):
        raise _malformed(path, f"it holds a {type(data).__name__}, not a dict", "detectron2")
    data = {{"indexes": "ids", "scores": "objectness_logits"}.get(k, k): v for k, v in data.items()}
    missing = [k for k in ("ids", "boxes") if k not in data]
    if missing:
        raise _malformed(path, f"no {' or '.join(map(repr, missing))} key (keys: {', '.join(map(str, data))})",
                         "detectron2")
    mode = data.get("bbox_mode", XYXY_ABS)  # detectron2's default when the key is absent
    if mode != XYXY_ABS:
        raise CvtoolError(f"bbox_mode is {mode!r}, not BoxMode.XYXY_ABS (0)", where=str(path),
                          fix="convert the boxes with detectron2's BoxMode.convert(boxes, mode, BoxMode.XYXY_ABS) "
                              "and set bbox_mode=0")
    ids, boxes = list(data["ids"]), list(data["boxes"])
    logits = list(data["objectness_logits"]) if "objectness_logits" in data else [None] * len(boxes)
    if not len(ids) == len(boxes) == len(logits):
        raise _malformed(path, f"{len(ids)} ids, {len(boxes)} box arrays and {len(logits)} objectness arrays",
                         "detectron2")
    return [str(i) for i in ids], boxes, logits


def _from_mmdet(data, path: Path) -> tuple[None, list, list]:
    if not isinstance(data, (list, tuple)):
        raise _malformed(path, f"it holds a {type(data).__name__}, not a list", "mmdet")
    return None, list(data), [None] * len(data)


def _numeric(value, where: str, fmt: str) -> np.ndarray:
    """A float64 (n, 4) array (n x 5 for mmdet: a score column) from a file's entry (MATLAB's empty 0 x 0: n = 0)."""
    columns = (4, 5) if fmt == "mmdet" else (4,)
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        array = None
    if array is not None and array.size == 0:
        return np.zeros((0, 4))
    if array is None or array.ndim != 2 or array.shape[1] not in columns:
        shape = getattr(value, "shape", type(value).__name__)
        raise CvtoolError(f"proposals of shape {shape}, not n x {' or '.join(map(str, columns))}", where=where,
                          fix=f"a {fmt} proposal file holds {LAYOUT[fmt]}")
    if not np.isfinite(array).all():
        raise CvtoolError("a proposal has a non-finite coordinate or score", where=where,
                          fix="store finite pixel boxes")
    return array


def _checked_scores(value, count: int, where: str) -> np.ndarray:
    try:
        scores = np.asarray(value, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        scores = None
    if scores is None or len(scores) != count:
        raise CvtoolError(f"{'unreadable' if scores is None else len(scores)} scores for {count} proposals",
                          where=where, fix="store one score per proposal")
    return scores


def _check_alignment(path: Path, file_ids: list[str] | None, count: int, ids: list[str]) -> None:
    if count != len(ids):
        index = min(count, len(ids))
        image = ids[index] if index < len(ids) else (file_ids[index] if file_ids else "beyond the split")
        raise CvtoolError(f"the file holds proposals for {count} images but the split has {len(ids)} (first "
                          f"{'missing' if count < len(ids) else 'extra'} image: {image})",
                          where=_where(path, index, image),
                          fix="write the proposals for exactly the split's images, in its order")
    if file_ids is None:
        return
    wrong = next((i for i, (a, b) in enumerate(zip(file_ids, ids)) if a != str(b)), None)
    if wrong is not None:
        raise CvtoolError(f"image #{wrong} of the file is {file_ids[wrong]!r} but the split has {ids[wrong]!r} there "
                          f"(order or ids differ)", where=_where(path, wrong, ids[wrong]),
                          fix="write the proposals in the split file's image order")


def _checked_boxes(boxes: np.ndarray, stored: np.ndarray, size: tuple[int, int] | None, fmt: str,
                   where: str) -> np.ndarray:
    """float32 `boxes` (continuous x1 y1 x2 y2) after the per-image checks: not empty, not inverted, inside the
    image up to SLACK px; messages quote the `stored` rows as the file holds them."""
    if len(boxes) == 0:
        raise CvtoolError("the image has no proposals", where=where,
                          fix="every image needs at least one proposal (e.g. the whole image)")
    inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if inverted.size:
        j = inverted[0]
        raise CvtoolError(f"proposal {j} = [{_box_text(stored[j])}] has its second corner before its first: not "
                          f"{ORDER[fmt]} boxes (widths and heights? x/y swapped?)", where=where,
                          fix=f"store {ORDER[fmt]} corner boxes")
    if size is not None:
        width, height = size
        outside = np.flatnonzero((boxes[:, :2] < -SLACK).any(axis=1) | (boxes[:, 2] > width + SLACK)
                                 | (boxes[:, 3] > height + SLACK))
        if outside.size:
            j = outside[0]
            raise CvtoolError(f"proposal {j} = [{_box_text(stored[j])}] reaches outside the {width}x{height} image: "
                              f"the boxes look like {SWAPPED[fmt]} (or another format), not {ORDER[fmt]}",
                              where=where, fix=f"store {ORDER[fmt]} pixel boxes of this image")
    return boxes.astype(np.float32)


def _box_text(box: np.ndarray) -> str:
    return " ".join(f"{v:g}" for v in box)
