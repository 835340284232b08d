"""`cvtool eval task=... predictions=PATH`: stored predictions through the same evaluators as models.

numpy, Pillow and pycocotools only: nothing here (or imported from here) loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from cvtool.data.roots import prepared_root
from cvtool.engine.progress import track
from cvtool.errors import CvtoolError

if TYPE_CHECKING:
    from cvtool.metrics.box_matching import DetectionData

PROPOSAL_SUFFIXES = (".mat", ".pkl", ".pickle")  # detection predictions= that are region proposals


@dataclass
class Evaluation:
    """What `cvtool eval` reports: the metrics JSON, class names for the table, the protocol banner."""

    metrics: dict
    class_names: list[str]
    protocol: str
    source: str
    confusion: np.ndarray | None = field(default=None, repr=False)  # -> plots/confusion_matrix.png
    curves: dict | None = field(default=None, repr=False)  # class -> (recall, precision): plots/pr_curves.png
    detections: DetectionData | None = field(default=None, repr=False)  # -> detection_analysis.json
    roc: tuple | None = field(default=None, repr=False)  # embedding: (fpr, tpr) of the pairs -> plots/roc.png


def evaluate_stored(cfg: DictConfig) -> Evaluation:
    task = cfg.task.name
    if task == "classification":
        return classification(cfg)
    if task == "segmentation":
        return segmentation(cfg)
    if task == "detection":
        kind = cfg.dataset.kind
        if kind == "voc":
            return voc_detection(cfg)
        if kind == "coco":
            return coco_detection(cfg)
        raise CvtoolError(f"dataset kind {kind!r} has no detection ground truth", where=f"dataset={cfg.dataset.name}",
                          fix="use dataset=voc, coco, shapes_det or shapes_coco")
    if task == "keypoints":
        return keypoints(cfg)
    if task == "embedding":
        return embedding(cfg)
    if task == "text":
        return text(cfg)
    raise CvtoolError(f"unknown task {task!r}", where="task",
                      fix="use task=classification, detection, segmentation, keypoints, embedding or text")


def dataset_classes(dataset: Mapping, count: int, key: str = "classes") -> list[str]:
    """dataset.classes when it names `count` classes; index names when it is null; an error otherwise."""
    names = dataset.get(key)
    if names is None:
        return [str(k) for k in range(count)]
    if len(names) != count:
        raise CvtoolError(f"dataset.classes names {len(names)} classes but the data has {count}",
                          where="dataset.classes", fix=f"pass {count} names, or dataset.classes=null")
    return [str(n) for n in names]


def classification(cfg: DictConfig) -> Evaluation:
    from cvtool.data.logits_files import read_classification_predictions
    from cvtool.metrics.classification import ClassificationEvaluator

    logits, targets = read_classification_predictions(cfg.predictions, cfg.targets)
    evaluator = ClassificationEvaluator(logits.shape[1], topk=cfg.task.topk)
    evaluator.process({"target": targets}, logits)
    return Evaluation(evaluator.evaluate(), dataset_classes(cfg.dataset, logits.shape[1]), evaluator.protocol(),
                      str(cfg.predictions), evaluator.confusion)


def _refuse_json(cfg: DictConfig, expected: str) -> None:
    if Path(cfg.predictions).suffix.lower() == ".json":
        raise CvtoolError(f"predictions is a COCO results JSON but dataset={cfg.dataset.name} expects {expected}",
                          where="predictions", fix="use dataset=coco dataset.ann_file=... (or dataset=shapes_coco)")


def voc_detection(cfg: DictConfig) -> Evaluation:
    from cvtool.data.voc_annotations import load_voc_objects
    from cvtool.data.voc_results import read_result_file, result_files
    from cvtool.metrics.voc import Boxes, VOCEvaluator

    from .detection_analysis import analysis_input

    class_names = list(cfg.dataset.classes)
    split = cfg.dataset.split
    if Path(str(cfg.predictions)).suffix in PROPOSAL_SUFFIXES:
        return voc_proposals(cfg, class_names, split)
    _refuse_json(cfg, "a directory of comp4_det_<split>_<class>.txt files")
    gt = load_voc_objects(prepared_root(cfg.dataset), split, class_names)
    files = result_files(cfg.predictions, split, class_names)
    index = {image_id: i for i, image_id in enumerate(gt.image_ids)}
    evaluator = VOCEvaluator(Boxes.make(gt.image, gt.label, gt.box, difficult=gt.difficult), gt.image_ids,
                             class_names)
    for name, path in files.items():
        image, scores, boxes = read_result_file(path, index)
        evaluator.add(Boxes.make(image, class_names.index(name), boxes, scores=scores))
    return Evaluation(evaluator.evaluate(), class_names, evaluator.protocol(),
                      f"{cfg.predictions} on {split} ({len(gt.image_ids)} images)", curves=evaluator.curves,
                      detections=analysis_input(cfg, evaluator))


def voc_proposals(cfg: DictConfig, class_names: list[str], split: str) -> Evaluation:
    """A proposal file (Fast R-CNN .mat, detectron2 or MMDetection pickle) checked against the split: its recall at
    IoU 0.5 / 0.7 and average recall at 100, 300 and 1000 proposals per image ("difficult" objects excluded)."""
    from cvtool.data.proposal_files import read_proposals
    from cvtool.data.voc_annotations import load_voc_objects
    from cvtool.metrics.proposals import proposal_recall

    gt = load_voc_objects(prepared_root(cfg.dataset), split, class_names)
    found = read_proposals(Path(str(cfg.predictions)), gt.image_ids, [gt.sizes.get(i) for i in gt.image_ids])
    continuous = gt.box - np.array([1.0, 1.0, 0.0, 0.0])  # VOC 1-based inclusive -> continuous 0-based pixels
    objects = [continuous[(gt.image == i) & ~gt.difficult] for i in range(len(gt.image_ids))]
    return Evaluation(proposal_recall(objects, found.boxes), class_names,
                      "proposal recall: greedy one-to-one matching per image (detectron2 / Fast R-CNN), "
                      "AR = mean recall over IoU 0.5:0.05:0.95, difficult objects excluded",
                      f"{cfg.predictions} on {split} ({len(gt.image_ids)} images)")


def coco_detection(cfg: DictConfig) -> Evaluation:
    from cvtool.data.coco_json import load_instances, load_results, require_segmentations
    from cvtool.metrics.coco import CocoEvaluator, check_iou_types, coco_api

    from .detection_analysis import analysis_input

    prepared_root(cfg.dataset)
    gt_data = load_instances(cfg.dataset.ann_file)
    results = load_results(cfg.predictions, gt_data)
    iou_types = check_iou_types(results, cfg.iou_type, str(cfg.predictions))
    if "segm" in iou_types:
        require_segmentations(gt_data, cfg.dataset.ann_file)
    categories = sorted(gt_data["categories"], key=lambda c: c["id"])
    evaluator = CocoEvaluator(coco_api(gt_data, cfg.backend), [c["id"] for c in categories], iou_types, cfg.backend)
    evaluator.results = results
    return Evaluation(evaluator.evaluate(), [c["name"] for c in categories], evaluator.protocol(),
                      str(cfg.predictions), curves=evaluator.curves, detections=analysis_input(cfg, evaluator))


def keypoints(cfg: DictConfig) -> Evaluation:
    """A COCO keypoint results JSON against dataset.ann_file: OKS-AP with dataset.sigmas and PCK."""
    from cvtool.data.coco_keypoints import load_keypoint_instances
    from cvtool.data.keypoint_results import load_keypoint_results
    from cvtool.metrics.keypoints import KeypointEvaluator

    prepared_root(cfg.dataset)
    gt_data = load_keypoint_instances(cfg.dataset.ann_file)
    categories = sorted(gt_data["categories"], key=lambda c: c["id"])
    names = next((list(c["keypoints"]) for c in categories if c.get("keypoints")), [])
    sigmas = cfg.dataset.get("sigmas")  # a dataset config without the key gets the same "no sigmas" error
    sigmas = None if sigmas is None else list(sigmas)
    evaluator = KeypointEvaluator(gt_data, sigmas, cfg.task.pck_threshold, names, cfg.backend)
    evaluator.results = load_keypoint_results(cfg.predictions, gt_data)
    return Evaluation(evaluator.evaluate(), [c["name"] for c in categories], evaluator.protocol(),
                      str(cfg.predictions), curves=evaluator.curves)


def embedding(cfg: DictConfig) -> Evaluation:
    """embeddings.npy + index.csv: verification on the LFW pairs (pairs=, the pairs.txt beside the embeddings, or
    generated for their identities) and retrieval over every row."""
    from cvtool.data.embedding_files import read_embeddings
    from cvtool.data.identity_folders import image_number
    from cvtool.data.lfw_pairs import generate_pairs, read_pairs
    from cvtool.metrics.embedding import EmbeddingEvaluator

    embeddings, names, identities = read_embeddings(cfg.predictions)
    identities = _row_identities(identities, cfg.targets, str(cfg.predictions))
    order = sorted(set(identities))
    label_of = {name: label for label, name in enumerate(order)}
    labels = [label_of[name] for name in identities]
    members: dict[str, list[tuple[str, int]]] = {name: [] for name in order}
    for row, (identity, name) in enumerate(zip(identities, names)):
        members[identity].append((name, row))
    rows = {(identity, image_number(identity, name) or position): row for identity, items in members.items()
            for position, (name, row) in enumerate(sorted(items), start=1)}
    available = {name: set() for name in order}
    for identity, number in rows:
        available[identity].add(number)
    beside = Path(cfg.predictions).with_name("pairs.txt") if Path(cfg.predictions).is_file() else \
        Path(cfg.predictions) / "pairs.txt"
    source = cfg.pairs or (beside if beside.is_file() else None)
    ds = cfg.dataset
    if source is not None:
        pairs = read_pairs(source, available)[0]
    else:
        pairs = generate_pairs(available, folds=ds.pairs_folds, per_fold=ds.pairs_per_fold, seed=ds.split_seed)
        source = f"generated pairs ({ds.pairs_folds} folds x {ds.pairs_per_fold}, seed {ds.split_seed})"
    indices = np.asarray([(rows[p.left], rows[p.right], int(p.same), p.fold) for p in pairs], dtype=np.int64)
    evaluator = EmbeddingEvaluator(labels, indices.reshape(-1, 4))
    evaluator.process({"index": np.arange(len(embeddings))}, embeddings)
    return Evaluation(evaluator.evaluate(), order, evaluator.protocol(),
                      f"{cfg.predictions} ({len(embeddings)} embeddings, {len(order)} identities; pairs: {source})",
                      roc=evaluator.last_roc)


def _row_identities(identities: list, targets, where: str) -> list[str]:
    """The identity of every stored embedding: index.csv's identity column, else targets= (a .npy of integer
    labels, or a text file of one name per line)."""
    if targets is None:
        if any(name is None for name in identities):
            raise CvtoolError("index.csv has no identity for some rows", where=where,
                              fix="pass targets=labels.npy (or a text file, one identity per line), or predict a "
                                  "split whose identities are known")
        return list(identities)
    path = Path(targets)
    if not path.is_file():
        raise CvtoolError("targets file not found", where=str(path), fix="check the path")
    if path.suffix == ".npy":
        try:
            values = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CvtoolError(f"cannot read targets: {exc}", where=str(path), fix="save integer labels with "
                              "numpy.save") from None
        found = [str(int(v)) for v in values.reshape(-1)] if values.dtype.kind in "iu" else None
    else:
        found = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if found is None or len(found) != len(identities):
        raise CvtoolError(f"targets has {'non-integer values' if found is None else f'{len(found)} rows'} for "
                          f"{len(identities)} embeddings", where=str(path), fix="one identity per embedding row")
    return found


def text(cfg: DictConfig) -> Evaluation:
    """pred.txt (`path<TAB>text`) against targets= (a gt.txt or an MJSynth annotation file), else the gt.txt beside
    the predictions, else the dataset's evaluation split; images are matched by path."""
    from cvtool.data.word_annotations import read_annotations, read_text_file
    from cvtool.metrics.text import TextEvaluator

    predictions = Path(cfg.predictions)
    if predictions.is_dir():
        predictions = predictions / "pred.txt"
    found = {_same_file(path, predictions.parent): word for path, word in read_text_file(predictions)}
    beside = predictions.with_name("gt.txt")
    if cfg.targets is not None or beside.is_file():
        truth = Path(cfg.targets) if cfg.targets is not None else beside
        lexicon = cfg.dataset.get("lexicon")
        lexicon_path = truth.parent / lexicon if lexicon and (truth.parent / lexicon).is_file() else None
        items = read_annotations(truth, lexicon_path=lexicon_path)
    else:
        root = prepared_root(cfg.dataset)
        truth = root / cfg.dataset.annotations.format(split=cfg.dataset.split)
        items = read_annotations(truth, root=root, lexicon_path=root / cfg.dataset.lexicon
                                 if cfg.dataset.get("lexicon") else None)
    missing = [item for item in items if _same_file(item.path, None) not in found]
    if missing:
        raise CvtoolError(f"{len(missing)} of {len(items)} images of {truth} have no prediction (first: "
                          f"{missing[0].path})", where=str(predictions),
                          fix="predict every image of the split (cvtool predict writes pred.txt), or pass "
                              "targets= the ground truth of the images predicted")
    evaluator = TextEvaluator()
    evaluator.add([found[_same_file(item.path, None)] for item in items], [item.text for item in items])
    return Evaluation(evaluator.evaluate(), [], evaluator.protocol(),
                      f"{predictions} against {truth} ({len(items)} words)")


def _same_file(path: str, base: Path | None) -> str:
    """A path as a comparable key: made absolute against `base` (a file's directory) and normalised."""
    return os.path.normpath(os.path.join(base, path) if base is not None else os.path.abspath(path))


def _confusion_of(pair: tuple[Path, Path], num_classes: int, ignore_index: int | None) -> np.ndarray:
    from cvtool.data.index_png import read_index_png
    from cvtool.metrics.segmentation import confusion_matrix

    gt_path, pred_path = pair
    if not pred_path.is_file():
        raise CvtoolError("prediction missing", where=str(pred_path),
                          fix="write one index PNG per image of the split, named <image id>.png")
    gt, pred = read_index_png(gt_path), read_index_png(pred_path)
    if gt.shape != pred.shape:
        raise CvtoolError(f"prediction is {pred.shape[1]}x{pred.shape[0]} but its ground truth {gt_path} is "
                          f"{gt.shape[1]}x{gt.shape[0]}", where=str(pred_path),
                          fix="predict at the original image size")
    if pred.size and pred.max() >= num_classes:
        raise CvtoolError(f"prediction value {int(pred.max())} is not a class index in [0, {num_classes})",
                          where=str(pred_path), fix="write class indices (or set dataset.num_classes)")
    return confusion_matrix(gt, pred, num_classes, ignore_index)


def segmentation(cfg: DictConfig) -> Evaluation:
    from cvtool.data.voc_annotations import check_devkit_root, read_split
    from cvtool.metrics.segmentation import SegmentationEvaluator

    pred_dir = Path(cfg.predictions)
    if not pred_dir.is_dir():
        raise CvtoolError("predictions directory not found", where=str(pred_dir),
                          fix="pass predictions= a directory of index PNGs named <image id>.png")
    root = check_devkit_root(prepared_root(cfg.dataset), "SegmentationClass")
    ids = read_split(root, "Segmentation", cfg.dataset.split)
    num_classes, ignore_index = int(cfg.dataset.num_classes), cfg.dataset.ignore_index
    class_names = dataset_classes(cfg.dataset, num_classes)
    evaluator = SegmentationEvaluator(num_classes, ignore_index)
    pairs = [(root / "SegmentationClass" / f"{i}.png", pred_dir / f"{i}.png") for i in ids]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # PNG decoding releases the GIL
        for confusion in track(pool.map(lambda p: _confusion_of(p, num_classes, ignore_index), pairs),
                               total=len(pairs), description="evaluating masks"):
            evaluator.confusion += confusion
    return Evaluation(evaluator.evaluate(), class_names, evaluator.protocol(),
                      f"{pred_dir} on {cfg.dataset.split} ({len(ids)} images)", evaluator.confusion)
