"""Evaluation speed, measured in one run:

1. VOC AP of 100k detections over 5k images (20 classes): cvtool's vectorised code vs a per-detection Python loop
   (benchmarks/voc_loop.py, the devkit's algorithm), with a check that both give the same APs;
2. the whole `cvtool eval task=detection predictions=DIR` process on that data written as a VOC devkit + comp4
   files (XML parsing included);
3. COCO bbox evaluation of the same detections: pycocotools vs faster-coco-eval (same numbers to 1e-12).

    python benchmarks/eval_speed.py [--images 5000] [--detections 100000]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from voc_loop import voc_loop_ap  # noqa: E402

from cvtool.data.voc_results import write_result_files  # noqa: E402
from cvtool.metrics.coco import STAT_NAMES, coco_api, coco_metrics  # noqa: E402
from cvtool.metrics.voc import Boxes, voc_metrics  # noqa: E402

CLASSES = [f"class{k:02d}" for k in range(20)]


def synthetic(images: int, detections: int, seed: int = 0) -> tuple[Boxes, Boxes]:
    """~3 ground-truth boxes per image (10% difficult) and noisy, duplicated or spurious detections."""
    rng = np.random.default_rng(seed)
    n_gt = images * 3
    xy = rng.uniform(1, 400, (n_gt, 2))
    gt = Boxes.make(rng.integers(0, images, n_gt), rng.integers(0, len(CLASSES), n_gt),
                    np.concatenate([xy, xy + rng.uniform(10, 100, (n_gt, 2))], 1).round(),
                    difficult=rng.random(n_gt) < 0.1)
    pick = rng.integers(0, n_gt, detections)
    box = gt.box[pick] + rng.normal(0, 6, (detections, 4))
    box[:, 2:] = np.maximum(box[:, 2:], box[:, :2])
    label = np.where(rng.random(detections) < 0.15, rng.integers(0, len(CLASSES), detections), gt.label[pick])
    return gt, Boxes.make(gt.image[pick], label, box, scores=rng.random(detections).round(3))


def loop_metrics(gt: Boxes, dets: Boxes, use_07: bool) -> list[float | None]:
    aps = []
    for k in range(len(CLASSES)):
        g = {}
        for i in np.flatnonzero(gt.label == k):
            g.setdefault(int(gt.image[i]), []).append((tuple(gt.box[i].tolist()), bool(gt.difficult[i])))
        d = [(int(dets.image[i]), float(dets.scores[i]), tuple(dets.box[i].tolist()))
             for i in np.flatnonzero(dets.label == k)]
        aps.append(voc_loop_ap(g, d, use_07))
    return aps


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def write_devkit(root: Path, gt: Boxes, image_ids: list[str]) -> None:
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in image_ids))
    by_image: dict[int, list[int]] = {}
    for j, image in enumerate(gt.image):
        by_image.setdefault(int(image), []).append(j)
    for index, image_id in enumerate(image_ids):
        ann = ET.Element("annotation")
        for j in by_image.get(index, []):
            obj = ET.SubElement(ann, "object")
            ET.SubElement(obj, "name").text = CLASSES[gt.label[j]]
            ET.SubElement(obj, "difficult").text = str(int(gt.difficult[j]))
            box = ET.SubElement(obj, "bndbox")
            for tag, value in zip(("xmin", "ymin", "xmax", "ymax"), gt.box[j]):
                ET.SubElement(box, tag).text = str(int(value))
        ET.ElementTree(ann).write(root / "Annotations" / f"{image_id}.xml")


def coco_data(gt: Boxes, dets: Boxes, images: int) -> tuple[dict, list[dict]]:
    """The same boxes as COCO ground truth (xywh, area) and results."""
    data = {"images": [{"id": i, "width": 500, "height": 500} for i in range(images)],
            "categories": [{"id": k + 1, "name": name} for k, name in enumerate(CLASSES)],
            "annotations": [{"id": j + 1, "image_id": int(gt.image[j]), "category_id": int(gt.label[j]) + 1,
                             "bbox": [x0, y0, x1 - x0 + 1, y1 - y0 + 1], "area": (x1 - x0 + 1) * (y1 - y0 + 1),
                             "iscrowd": int(gt.difficult[j])}
                            for j, (x0, y0, x1, y1) in enumerate(gt.box.tolist())]}
    results = [{"image_id": int(i), "category_id": int(k) + 1, "score": float(s), "bbox": [x0, y0, x1 - x0, y1 - y0]}
               for i, k, s, (x0, y0, x1, y1) in zip(dets.image, dets.label, dets.scores, dets.box.tolist())]
    return data, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100_000)
    args = parser.parse_args()
    gt, dets = synthetic(args.images, args.detections)
    print(f"{args.detections} detections, {len(gt.label)} ground-truth boxes, {args.images} images, "
          f"{len(CLASSES)} classes")

    ours, t_vec = timed(voc_metrics, gt, dets, CLASSES)
    loop07, t_loop07 = timed(loop_metrics, gt, dets, True)
    loop10, t_loop10 = timed(loop_metrics, gt, dets, False)
    for key, loop in (("voc07", loop07), ("voc10", loop10)):
        assert np.allclose(list(ours[key]["per_class_AP"].values()), loop, rtol=0, atol=1e-12), key
    print(f"VOC AP (07 + 10)    vectorised {t_vec:6.3f} s   per-detection loop {t_loop07 + t_loop10:6.3f} s   "
          f"speed-up x{(t_loop07 + t_loop10) / t_vec:.1f}   (identical APs, mAP10 {ours['voc10']['mAP']:.4f})")

    with tempfile.TemporaryDirectory() as tmp:
        root, results = Path(tmp) / "VOC", Path(tmp) / "results"
        image_ids = [f"{i:06d}" for i in range(args.images)]
        write_devkit(root, gt, image_ids)
        write_result_files(results, "test", CLASSES, image_ids, dets.image, dets.label, dets.scores, dets.box)
        command = [sys.executable, "-m", "cvtool", "eval", "task=detection", "dataset=voc", f"dataset.root={root}",
                   "dataset.split=test", f"dataset.classes=[{','.join(CLASSES)}]", f"predictions={results}",
                   f"paths.runs={tmp}/runs"]
        for extra, what in (["plots=false"], "metrics JSON + table"), ([], "... + precision-recall picture"):
            start = time.perf_counter()
            subprocess.run([*command, *extra], check=True, capture_output=True)
            print(f"whole `cvtool eval` process on the devkit files (XML + comp4 parsing), {what}: "
                  f"{time.perf_counter() - start:.2f} s")

    data, results = coco_data(gt, dets, args.images)
    timings, numbers = {}, {}
    for backend in ("pycocotools", "faster_coco_eval"):
        api = coco_api(data, backend)
        with contextlib.redirect_stdout(io.StringIO()):
            numbers[backend], timings[backend] = timed(coco_metrics, api, results, ["bbox"], backend)
    same = all(abs((numbers["pycocotools"]["bbox"][n] or 0) - (numbers["faster_coco_eval"]["bbox"][n] or 0)) <= 1e-12
               for n in STAT_NAMES)
    print(f"COCO bbox eval      pycocotools {timings['pycocotools']:6.2f} s   faster-coco-eval "
          f"{timings['faster_coco_eval']:6.2f} s   speed-up x{timings['pycocotools'] / timings['faster_coco_eval']:.1f}"
          f"   (12 numbers equal to 1e-12: {same})")


if __name__ == "__main__":
    main()
