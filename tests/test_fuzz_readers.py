"""Fuzzed readers: every malformed annotation or prediction file gives a result or one CvtoolError naming the file,
never another exception. Each input goes through the reader and on through `evaluate_stored`, as `cvtool eval
predictions=...` would use it; derandomized, so CI always runs the same examples."""

from __future__ import annotations

import copy
import io
import json
import math
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from omegaconf import OmegaConf
from PIL import Image
from pycocotools import mask as mask_utils

from cvtool.commands.evaluate_stored import evaluate_stored
from cvtool.config import runner
from cvtool.data.coco_json import load_instances, load_results
from cvtool.data.index_png import read_index_png, write_index_png
from cvtool.data.logits_files import read_classification_predictions
from cvtool.data.voc_annotations import BOX_TAGS, parse_annotation, read_voc_split
from cvtool.data.voc_results import read_result_file
from cvtool.errors import CvtoolError
from cvtool.metrics.detection_analysis import analyse

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::RuntimeWarning", "ignore::UserWarning")
FUZZ = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CLASSES = ["circle", "square"]

ODD_VALUES = [None, True, False, "", "x", "1", -1, 0, 1, 2.5, -0.0, 1e308, -1e308, 10**30, float("nan"),
              float("inf"), float("-inf"), [], {}, [1], [[]], {"a": 1}, [1, 2, 3, 4], ["1", "2", "3", "4"]]
odd = st.sampled_from(ODD_VALUES)
odd_text = st.one_of(st.sampled_from(["", " ", "nan", "inf", "-inf", "1e400", "-5", "abc", "0x10", "1_0", "٣"]),
                    st.floats().map(repr), st.text(max_size=4))


def mostly(valid, odd_strategy, one_in: int = 10):
    """`valid`, replaced by `odd_strategy` about once in `one_in` draws: most inputs carry one or two defects."""
    return st.integers(1, one_in).flatmap(lambda k: odd_strategy if k == one_in else valid)


def rarely(draw, one_in: int) -> bool:
    """True about once in `one_in` draws; Hypothesis shrinks towards False, the unbroken input."""
    return draw(st.integers(1, one_in)) == one_in


numberish = mostly(st.integers(0, 120).map(str), odd_text)


def run(fn, *args):
    """fn(*args), or None when it raised a CvtoolError (whose message must name where)."""
    try:
        result = fn(*args)
    except CvtoolError as err:
        assert err.where and err.what, err.line()
        event(f"{fn.__name__}: error")
        return None
    event(f"{fn.__name__}: result")
    return result


ANALYSIS = OmegaConf.to_container(runner.compose("eval", []).analysis)  # the shipped defaults


def analysed(evaluation) -> bool:
    """The detection error analysis of an evaluation that gave metrics: fractions where fractions belong."""
    if evaluation.detections is None:
        return True
    analysis = analyse(evaluation.detections, ANALYSIS)
    return unit(analysis["tide"]["ap"]) and all(e["count"] >= 0 for e in analysis["tide"]["errors"].values())


def unit(metric: float | None) -> bool:
    """A metric that is undefined (None) or in [0, 1]."""
    return metric is None or 0 <= metric <= 1


@st.composite
def garbled(draw, text: bytes) -> bytes:
    """The text as it is (most often), truncated, with one byte replaced or inserted, or random bytes."""
    how = draw(st.sampled_from(["keep"] * 10 + ["truncate", "replace", "insert", "random"]))
    i = draw(st.integers(0, len(text)))
    if how == "truncate":
        return text[:i]
    if how in ("replace", "insert"):
        byte = bytes([draw(st.integers(0, 255))])
        return text[:i] + byte + text[i + (how == "replace"):]
    if how == "random":
        return draw(st.binary(max_size=80))
    return text


def _slots(node, out: list) -> list:
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((node, key))
            _slots(value, out)
    elif isinstance(node, list):
        for k, value in enumerate(node):
            out.append((node, k))
            _slots(value, out)
    return out


@st.composite
def mutated(draw, document):
    """A deep copy of a JSON document with a few values replaced by odd ones or keys deleted."""
    doc = copy.deepcopy(document)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        slots = _slots(doc, [])
        if not slots or rarely(draw, 20):
            return copy.deepcopy(draw(odd))
        parent, key = draw(st.sampled_from(slots))
        if isinstance(parent, dict) and draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = copy.deepcopy(draw(odd))
    return doc


def json_bytes(draw, document) -> bytes:
    return draw(garbled(json.dumps(draw(mutated(document))).encode()))


# ---------------------------------------------------------------- VOC devkit annotations and comp4 result files

@st.composite
def voc_xml(draw) -> bytes:
    def element(tag: str, text: str) -> str:
        return "" if rarely(draw, 10) else f"<{tag}>{escape(text)}</{tag}>"

    parts = ["<annotation><filename>a.jpg</filename>"]
    if draw(st.booleans()):
        parts.append(f"<size>{element('width', draw(numberish))}{element('height', draw(numberish))}</size>")
    for _ in range(draw(st.integers(0, 3))):
        x, y, w, h = (draw(st.integers(1, 60)) for _ in range(4))
        corners = zip(BOX_TAGS, (x, y, x + w, y + h))
        box = "".join(element(tag, draw(mostly(st.just(str(v)), odd_text))) for tag, v in corners)
        parts.append("<object>" + element("name", draw(st.sampled_from([*CLASSES, *CLASSES, "dog", " circle "])))
                     + element("difficult", draw(st.sampled_from(["0", "1", "", "x"])))
                     + (f"<bndbox>{box}</bndbox>" if not rarely(draw, 10) else "") + "</object>")
    return draw(garbled(("".join(parts) + "</annotation>").encode()))


comp4_line = mostly(st.tuples(st.sampled_from(["a", "b"]), st.floats(0, 1).map(repr), numberish, numberish,
                              st.integers(60, 90).map(str), numberish).map(" ".join),
                    st.lists(st.one_of(st.sampled_from(["a", "b", "zz"]), numberish), max_size=8).map(" ".join))
comp4_text = st.lists(comp4_line, max_size=4).map("\n".join)


@pytest.fixture(scope="module")
def voc(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("voc")
    for sub in ("ImageSets/Main", "Annotations", "results"):
        (root / sub).mkdir(parents=True)
    (root / "Annotations" / "b.xml").write_text("<annotation><object><name>square</name><bndbox><xmin>1</xmin>"
                                                "<ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
                                                "</annotation>")
    cfg = OmegaConf.create({"task": {"name": "detection"}, "predictions": str(root / "results"),
                            "dataset": {"name": "voc", "kind": "voc", "root": str(root), "split": "val",
                                        "classes": CLASSES}, "analysis": ANALYSIS})
    return {"root": root, "cfg": cfg}


@FUZZ
@given(xml=voc_xml(), split=garbled(b"a\nb\n"), results=comp4_text.map(str.encode).flatmap(garbled))
def test_voc_annotations_and_result_files_give_metrics_or_one_error(voc, xml, split, results):
    root = voc["root"]
    (root / "Annotations" / "a.xml").write_bytes(xml)
    (root / "ImageSets" / "Main" / "val.txt").write_bytes(split)
    result_file = root / "results" / "comp4_det_val_circle.txt"
    result_file.write_bytes(results)
    parsed = run(parse_annotation, root / "Annotations" / "a.xml", {name: k for k, name in enumerate(CLASSES)})
    if parsed is not None:
        objects, size = parsed
        assert all(math.isfinite(v) for _, box, _ in objects for v in box)
        assert all(box[0] <= box[2] and box[1] <= box[3] for _, box, _ in objects)
        assert size is None or (min(size) >= 0 and all(isinstance(v, int) for v in size))
    run(read_voc_split, root, "val", CLASSES, [])
    boxes = run(read_result_file, result_file, {"a": 0, "b": 1})
    if boxes is not None:
        assert np.isfinite(boxes[1]).all() and np.isfinite(boxes[2]).all()
    evaluation = run(evaluate_stored, voc["cfg"])
    assert evaluation is None or unit(evaluation.metrics["voc10"]["mAP"]) and analysed(evaluation)


# ---------------------------------------------------------------- COCO instances and results JSON

def rle(mask: np.ndarray) -> dict:
    encoded = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


H, W = 12, 16
BLOB = np.zeros((H, W), bool)
BLOB[2:8, 3:11] = True
GT = {"images": [{"id": 1, "width": W, "height": H, "file_name": "1.jpg"}, {"id": 2, "width": W, "height": H}],
      "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
      "annotations": [
          {"id": 1, "image_id": 1, "category_id": 1, "bbox": [3, 2, 8, 6], "area": 48, "iscrowd": 0,
           "segmentation": [[3, 2, 11, 2, 11, 8, 3, 8]]},
          {"id": 2, "image_id": 2, "category_id": 2, "bbox": [3, 2, 8, 6], "area": 48, "iscrowd": 0,
           "segmentation": rle(BLOB)},
          {"id": 3, "image_id": 2, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16, "iscrowd": 1,
           "segmentation": {"size": [H, W], "counts": [0, 4, 8, 4, 8, 4, 8, 4, 152]}}]}
RESULTS = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": [3.0, 2.0, 8.0, 6.0], "segmentation": rle(BLOB)},
           {"image_id": 2, "category_id": 2, "score": 0.5, "bbox": [4.0, 2.0, 8.0, 6.0],
            "segmentation": rle(np.roll(BLOB, 1, axis=1))}]
RLE_CHARS = "".join(chr(c) for c in range(48, 112))
counts = st.one_of(st.text(RLE_CHARS, max_size=8), st.text(max_size=6), odd,
                   st.lists(st.integers(-3, 200), max_size=6),
                   st.sampled_from(["@@@", rle(BLOB)["counts"], rle(BLOB)["counts"][:-1], rle(BLOB)["counts"] + "1",
                                    rle(np.ones((3, 3)))["counts"]]))
sizes = st.one_of(st.just([H, W]), st.just([W, H]), odd, st.lists(st.integers(-1, 20), max_size=3))


@st.composite
def coco_results(draw) -> bytes:
    results = copy.deepcopy(RESULTS)
    if rarely(draw, 3):
        target = results[draw(st.integers(0, 1))]["segmentation"]
        target["counts"] = draw(counts)
        if rarely(draw, 4):
            target["size"] = draw(sizes)
    return json_bytes(draw, results)


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("coco")
    dataset = {"name": "coco", "kind": "coco", "root": None, "ann_file": str(root / "gt.json")}
    cfg = OmegaConf.create({"task": {"name": "detection"}, "predictions": str(root / "res.json"), "iou_type": None,
                            "backend": "pycocotools", "dataset": dataset, "analysis": ANALYSIS})
    return {"root": root, "cfg": cfg}


def evaluate_coco(cfg) -> None:
    for backend in ("pycocotools", "faster_coco_eval"):
        for iou_type in (None, "bbox", "segm"):
            evaluation = run(evaluate_stored, OmegaConf.merge(cfg, {"backend": backend, "iou_type": iou_type}))
            assert evaluation is None or all(unit(m["AP"]) for m in evaluation.metrics.values()) \
                and analysed(evaluation)


def test_the_unmutated_coco_files_give_metrics(coco):
    (coco["root"] / "gt.json").write_text(json.dumps(GT))
    (coco["root"] / "res.json").write_text(json.dumps(RESULTS))
    metrics = evaluate_stored(coco["cfg"]).metrics
    assert metrics["bbox"]["AP"] > 0.5 and metrics["segm"]["AP"] > 0.5


@FUZZ
@given(results=coco_results())
def test_coco_results_give_metrics_or_one_error(coco, results):
    (coco["root"] / "gt.json").write_text(json.dumps(GT))
    (coco["root"] / "res.json").write_bytes(results)
    run(load_results, coco["root"] / "res.json", copy.deepcopy(GT))
    evaluate_coco(coco["cfg"])


@st.composite
def coco_instances(draw) -> bytes:
    gt = copy.deepcopy(GT)
    if rarely(draw, 3):
        target = gt["annotations"][draw(st.integers(0, 2))]
        target["segmentation"] = draw(st.one_of(
            odd, st.lists(st.lists(st.one_of(st.integers(-5, 30), odd), max_size=9), max_size=2),
            st.fixed_dictionaries({"size": sizes, "counts": counts})))
    return json_bytes(draw, gt)


@FUZZ
@given(instances=coco_instances())
def test_coco_instances_give_metrics_or_one_error(coco, instances):
    (coco["root"] / "gt.json").write_bytes(instances)
    (coco["root"] / "res.json").write_text(json.dumps(RESULTS))
    run(load_instances, coco["root"] / "gt.json")
    evaluate_coco(coco["cfg"])


# ---------------------------------------------------------------- classification logits (CSV, NPY) and targets

csv_cell = st.one_of(numberish, st.sampled_from(["0", "1", "2", "1.0", "x.jpg"]))
csv_header = st.lists(st.sampled_from(["index", "file", "target", "pred", "logit_0", "logit_1", "logit_2",
                                       "logit_00", "logit_x", ""]), max_size=7)


@st.composite
def predictions_csv(draw) -> bytes:
    header = draw(mostly(st.just(["index", "target", "logit_0", "logit_1"]), csv_header, 4))
    row = st.tuples(st.integers(0, 1).map(str), *[st.floats(-9, 9).map(repr)] * 2)
    odd_row = st.lists(csv_cell, min_size=len(header), max_size=len(header))
    rows = [draw(mostly(row.map(lambda r, k=k: [str(k), *r]), odd_row)) for k in range(draw(st.integers(1, 4)))]
    if rows and rarely(draw, 10):
        rows[0] = rows[0][:-1]
    text = "\n".join(",".join(row) for row in [header, *rows])
    return draw(garbled(text.encode()))


ODD_DTYPES = ["<f2", ">i4", "|u1", "|b1", "<c8", "<U2", "|S1", "<M8[s]", "|O"]


def npy(draw, dtype: str, shape: tuple, elements) -> bytes:
    """An .npy file, most often of `dtype`, `shape` and `elements`, else of an odd dtype, shape or content."""
    dtype, shape = draw(mostly(st.just(dtype), st.sampled_from(ODD_DTYPES), 6)), draw(
        mostly(st.just(shape), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3), 6))
    if dtype == "|O":
        array = np.array([{"a": 1}, None], dtype=object)
    else:
        small = elements if np.dtype(dtype).kind == np.dtype(elements[0]).kind and draw(st.booleans()) else None
        array = draw(hnp.arrays(np.dtype(dtype), shape, elements=small and small[1]))
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return draw(garbled(buffer.getvalue()))


@st.composite
def logits_npy(draw) -> tuple[bytes, bytes]:
    n = draw(st.integers(1, 4))
    logits = npy(draw, "<f4", (n, 3), ("<f4", st.floats(-9, 9, width=32)))
    targets = npy(draw, "<i8", (n,), ("<i8", st.integers(0, 2)))
    return logits, targets


@pytest.fixture(scope="module")
def logits_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("logits")


def classify(predictions: Path, targets: Path | None) -> None:
    cfg = OmegaConf.create({"task": {"name": "classification", "topk": 2}, "dataset": {"classes": None},
                            "predictions": str(predictions), "targets": str(targets) if targets else None})
    evaluation = run(evaluate_stored, cfg)
    assert evaluation is None or unit(evaluation.metrics["top1"])


@FUZZ
@given(csv=predictions_csv())
def test_predictions_csv_gives_metrics_or_one_error(logits_dir, csv):
    path = logits_dir / "preds.csv"
    path.write_bytes(csv)
    read = run(read_classification_predictions, path, None)
    if read is not None:
        assert np.isfinite(read[0]).all() and read[0].shape[0] == read[1].shape[0] > 0
    classify(path, None)


@FUZZ
@given(arrays=logits_npy())
def test_logits_and_targets_npy_give_metrics_or_one_error(logits_dir, arrays):
    (logits_dir / "logits.npy").write_bytes(arrays[0])
    (logits_dir / "targets.npy").write_bytes(arrays[1])
    read = run(read_classification_predictions, logits_dir / "logits.npy", logits_dir / "targets.npy")
    if read is not None:
        assert np.isfinite(read[0]).all() and read[0].shape[0] == read[1].shape[0] > 0
    classify(logits_dir / "logits.npy", logits_dir / "targets.npy")


def test_npy_whose_header_promises_a_huge_array_is_refused_unallocated(logits_dir):
    with open(logits_dir / "huge.npy", "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**11, 3)})
        f.write(bytes(12))
    with pytest.raises(CvtoolError, match="header promises shape"):
        read_classification_predictions(logits_dir / "huge.npy", logits_dir / "huge.npy")


# ---------------------------------------------------------------- index PNGs (segmentation masks)

MODES = {"P": "|u1", "L": "|u1", "1": "|b1", "I;16": "<u2", "I": "<i4", "F": "<f4", "RGB": "|u1", "LA": "|u1"}


@st.composite
def index_image(draw) -> bytes:
    mode = draw(st.sampled_from(list(MODES)))
    shape = draw(st.sampled_from([(4, 5), (4, 5), (5, 4), (1, 1)]))
    if mode in ("RGB", "LA"):
        shape = (*shape, len(mode))
    dtype = np.dtype(MODES[mode])
    small = st.integers(-2, 4) if dtype.kind == "i" else st.integers(0, 4) if dtype.kind == "u" else None
    values = draw(hnp.arrays(dtype, shape, elements=small if small is not None and draw(st.booleans()) else None))
    image = Image.fromarray(values, mode="L") if mode == "P" else Image.fromarray(values)
    if mode == "P":
        image = image.convert("P")
    buffer = io.BytesIO()
    formats = {"P": "PNG BMP", "L": "PNG BMP", "1": "PNG BMP", "RGB": "PNG BMP", "I;16": "PNG TIFF", "I": "TIFF",
               "F": "TIFF", "LA": "PNG"}[mode].split()
    image.save(buffer, format=draw(st.sampled_from(formats)))
    return draw(garbled(buffer.getvalue()))


@pytest.fixture(scope="module")
def seg(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("seg")
    for sub in ("ImageSets/Segmentation", "SegmentationClass", "pred"):
        (root / sub).mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    cfg = OmegaConf.create({"task": {"name": "segmentation"}, "predictions": str(root / "pred"),
                            "dataset": {"root": str(root), "split": "val", "num_classes": 3, "ignore_index": 255,
                                        "classes": None}})
    return {"root": root, "cfg": cfg}


@FUZZ
@given(png=index_image())
def test_index_pngs_give_metrics_or_one_error(seg, png):
    root = seg["root"]
    fuzzed, gt, pred = root / "fuzzed.png", root / "SegmentationClass" / "a.png", root / "pred" / "a.png"
    fuzzed.write_bytes(png)
    indices = run(read_index_png, fuzzed)
    if indices is None:
        return
    assert indices.ndim == 2 and indices.dtype.kind in "ui"
    plain = np.zeros(indices.shape, np.uint8)
    for gt_file, pred_file in ((fuzzed, plain), (plain, fuzzed)):
        write_index_png(gt, plain) if gt_file is plain else gt.write_bytes(png)
        write_index_png(pred, plain) if pred_file is plain else pred.write_bytes(png)
        evaluation = run(evaluate_stored, seg["cfg"])
        assert evaluation is None or unit(evaluation.metrics["mIoU"])


def test_index_png_claiming_a_huge_size_is_refused_unread(tmp_path):
    header = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk)
    with pytest.raises(CvtoolError, match="unreadable image"):
        read_index_png(tmp_path / "bomb.png")


def test_negative_class_indices_are_refused(seg):
    mask = seg["root"] / "negative.tif"
    Image.fromarray(np.array([[-1, 0], [1, 2]], np.int32)).save(mask, format="TIFF")
    with pytest.raises(CvtoolError, match="negative value -1"):
        read_index_png(mask)


# ---------------------------------------------------------------- the CLI: one line, exit code 2

@pytest.mark.parametrize("counts", ["@@@", rle(np.ones((H, W)))["counts"] + "1", rle(np.ones((3, 3)))["counts"]])
def test_cli_names_the_result_with_a_malformed_rle(tmp_path, counts):
    gt, res = tmp_path / "gt.json", tmp_path / "res.json"
    gt.write_text(json.dumps(GT))
    res.write_text(json.dumps([*RESULTS, {**RESULTS[0], "segmentation": {"size": [H, W], "counts": counts}}]))
    done = subprocess.run([sys.executable, "-m", "cvtool", "eval", "task=detection", "dataset=coco",
                           f"dataset.ann_file={gt}", f"predictions={res}", "iou_type=segm", f"paths.runs={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: result 2 has a malformed RLE 'counts'") and f"({res} [2])" in last, last
