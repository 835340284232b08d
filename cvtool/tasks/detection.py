"""Detection adapter: VOC/COCO datasets, torchvision-style detectors (a loss dict in train mode, per-image
{boxes, scores, labels[, masks]} in eval mode), the VOC or COCO evaluator, result files for `cvtool predict`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from cvtool.data.coco_json import load_instances
from cvtool.data.detection_sets import DetectionItem, DetectionSet, open_detection_set, restrict_coco, with_sanitizing
from cvtool.data.roots import prepared_root
from cvtool.engine.hardware import Hardware
from cvtool.errors import CvtoolError
from cvtool.metrics.base import Baseline, to_numpy
from cvtool.metrics.coco import CocoEvaluator, coco_api, model_results
from cvtool.metrics.voc import Boxes, VOCEvaluator, model_boxes_to_voc
from cvtool.models import create_model
from cvtool.tasks.detection_proposals import attach_source_proposals, attach_split_proposals, proposals_of
from cvtool.tasks.images import NOT_BUILDER_ARGS

log = logging.getLogger("cvtool.detection")


def label_offset(model: torch.nn.Module) -> int:
    """1 when the model reserves class 0 for the background (torchvision's R-CNN/SSD convention), else 0."""
    return getattr(getattr(model, "module", model), "label_offset", 0)


def checked_loss_weights(task_cfg: dict, losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """task.loss_weights, checked against the names of the model's losses (torchvision's loss dicts)."""
    weights = task_cfg.get("loss_weights") or {}
    for name, weight in weights.items():
        if name not in losses:
            problem = f"unknown loss {name!r}"
        elif isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            problem = f"the weight of {name} must be a number >= 0, got {weight!r}"
        else:
            continue
        raise CvtoolError(problem, where="task.loss_weights", fix=f"weigh this model's losses: {', '.join(losses)}")
    return weights


class DetectionTask:
    name = "detection"
    # Inference in full precision even when training uses AMP (as torchvision's reference evaluates): boxes
    # decoded in bf16 are only exact to 1/256 of their coordinate (up to 4 px at 800 px).
    amp_inference = False

    def __init__(self, task_cfg: dict, dataset_cfg: dict, model_cfg: dict | None = None):
        self.cfg, self.dataset_cfg, self.model_cfg = task_cfg, dataset_cfg, model_cfg or {}
        self.with_masks = self.model_cfg.get("name") == "mask_rcnn"
        self.removed_boxes = 0
        self.train_boxes: DetectionSet | None = None  # the training set, for YOLO's k-means anchors
        spec = self.model_cfg.get("proposals")
        self.proposal_spec = None if spec in (None, "rpn") else str(spec)  # external proposals: fast_rcnn, rcnn

    @property
    def metric(self) -> str:
        """task.metric, where `auto` = voc10.mAP on VOC data and bbox.AP on COCO data."""
        if self.cfg["metric"] != "auto":
            return self.cfg["metric"]
        return "voc10.mAP" if self.dataset_cfg["kind"] == "voc" else "bbox.AP"

    # --- building ------------------------------------------------------------------------------------------
    def open_split(self, split: str, transform, *, skip_invalid: bool, seed: int, classes: list[str] | None = None,
                   train: bool = False, problems: list[str] | None = None) -> DetectionSet:
        ds = self.dataset_cfg
        if self.with_masks and ds["kind"] != "coco":
            raise CvtoolError("mask_rcnn needs instance masks, which cvtool reads from COCO JSON",
                              where=f"dataset={ds['name']}", fix="use dataset=shapes_coco or dataset=coco")
        root = prepared_root(ds)
        train_split = train and split == ds.get("train_split")
        dataset = open_detection_set(
            ds["kind"], root=root, split=split, classes=classes or ds.get("classes"),
            ann_file=ds.get("train_ann_file" if train_split else "ann_file"),
            image_dir=ds.get("train_image_dir" if train_split else "image_dir"), train=train,
            with_masks=self.with_masks and train, skip_invalid=skip_invalid, problems=problems)
        dataset.transform = with_sanitizing(transform) if train else transform
        if train:
            self.train_boxes = dataset
        if self.proposal_spec is not None:
            attach_split_proposals(self, dataset, split, root)
        return dataset.cache() if ds.get("cache") else dataset

    def build_model(self, model_cfg: dict, num_classes: int) -> torch.nn.Module:
        kwargs = {k: v for k, v in model_cfg.items() if k not in NOT_BUILDER_ARGS}
        if kwargs.get("anchors") == "auto":  # YOLO: k-means anchors of the training boxes (restored models load theirs)
            kwargs["anchors"] = self.kmeans_anchors(kwargs) if self.train_boxes is not None else None
        return create_model(model_cfg["name"], num_classes=num_classes, in_channels=self.dataset_cfg["channels"],
                            weights=model_cfg.get("weights"), **kwargs)

    def kmeans_anchors(self, model_kwargs: dict) -> list[list[float]]:
        """YOLOv2's dimension clusters: k-means (1 - IoU) of the training boxes' (w, h) at the network input size."""
        from cvtool.models.yolo import kmeans_anchors

        size = model_kwargs["image_size"]
        wh = []
        for item in self.train_boxes.items:
            width, height = item.size or (size, size)
            sides = item.boxes[:, 2:] - item.boxes[:, :2]
            wh.append(sides * [size / width, size / height])
        anchors = kmeans_anchors(np.concatenate(wh), model_kwargs["num_anchors"], seed=0)
        log.info("k-means anchors (w x h px at %d): %s", size, ", ".join(f"{w:.0f}x{h:.0f}" for w, h in anchors))
        return anchors.tolist()

    def build_evaluator(self, dataset: DetectionSet):
        """VOCEvaluator (VOC data) or CocoEvaluator (COCO data) over exactly the images of `dataset`."""
        if dataset.kind == "voc":
            items = dataset.items
            boxes = np.concatenate([it.boxes for it in items]) if items else np.zeros((0, 4))
            gt = Boxes.make(np.concatenate([np.full(len(it.labels), i) for i, it in enumerate(items)]),
                            np.concatenate([it.labels for it in items]), model_boxes_to_voc(boxes),
                            difficult=np.concatenate([it.ignore for it in items]))
            return VOCEvaluator(gt, [str(it.image_id) for it in items], dataset.classes)
        categories = sorted(c["id"] for c in dataset.coco["categories"])
        gt = coco_api(restrict_coco(dataset.coco, [it.image_id for it in dataset.items]), self.cfg["coco_backend"])
        return CocoEvaluator(gt, categories, ["bbox", "segm"] if self.with_masks else ["bbox"],
                             self.cfg["coco_backend"])

    def trivial_baseline(self, evaluator) -> Baseline:
        """Every AP and AR of a detector that finds nothing is 0."""
        return Baseline(0.0, "no-detection")

    # --- steps ---------------------------------------------------------------------------------------------
    def preprocess(self, batch, hardware: Hardware) -> dict:
        images, targets = batch
        device = hardware.device
        self.removed_boxes += sum(int(t.get("removed", 0)) for t in targets)
        return {"images": [image.to(device, non_blocking=True).float().div_(255) for image in images],
                "targets": [{k: v.to(device, non_blocking=True) for k, v in t.items() if torch.is_tensor(v)}
                            for t in targets],
                "image_id": [t["image_id"] for t in targets]}

    def batch_size(self, batch: dict) -> int:
        return len(batch["images"])

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        offset = label_offset(model)
        targets = [{**t, "labels": t["labels"] + offset} for t in batch["targets"]]
        losses = model(batch["images"], targets, **proposals_of(model, batch))
        weights = checked_loss_weights(self.cfg, losses)
        return {"loss": sum(v * weights.get(k, 1.0) for k, v in losses.items()),
                **{k: v.detach() for k, v in losses.items()},
                "removed_boxes": torch.tensor(float(self.removed_boxes))}

    def inference_step(self, model: torch.nn.Module, batch: dict) -> list[dict]:
        offset = label_offset(model)
        outputs = model(batch["images"], **proposals_of(model, batch))
        return [{**o, "labels": o["labels"] - offset} for o in outputs]

    # --- results ---------------------------------------------------------------------------------------------
    def write_results(self, directory: Path, dataset: DetectionSet, outputs: list[dict], split: str) -> list[Path]:
        """Result files in the dataset's own format: VOC comp4 files, or a COCO results JSON."""
        from cvtool.data.coco_json import write_results
        from cvtool.data.voc_results import write_result_files

        ids = [it.image_id for it in dataset.items]
        if dataset.kind == "coco":
            categories = sorted(c["id"] for c in dataset.coco["categories"])
            results = [r for image_id, o in zip(ids, outputs) for r in model_results(image_id, o, categories)]
            return [write_results(directory / "results.json", results)]
        dets = Boxes.concat([Boxes.make(i, to_numpy(o["labels"]), model_boxes_to_voc(to_numpy(o["boxes"])),
                                        scores=to_numpy(o["scores"])) for i, o in enumerate(outputs)])
        write_result_files(directory / "results", split, dataset.classes, [str(i) for i in ids], dets.image,
                           dets.label, dets.scores, dets.box)
        return [directory / "results"]

    def open_source(self, files: list[Path], transform, class_names: list[str], source: Path) -> DetectionSet:
        """Plain image files (no annotations); image ids are file stems (integers for COCO-format results)."""
        coco = self.dataset_cfg["kind"] == "coco"
        items = [DetectionItem(int(f.stem) if coco and f.stem.isdigit() else f.stem, f, np.zeros((0, 4)),
                               np.zeros(0, np.int64), np.zeros(0, bool), None) for f in files]
        data = load_instances(self.dataset_cfg["ann_file"]) if coco else None
        dataset = DetectionSet(items, class_names, self.dataset_cfg["kind"], str(source), train=False, coco=data)
        dataset.transform = transform
        if self.proposal_spec is not None:
            attach_source_proposals(self, dataset)
        return dataset

    def extra_hooks(self, model: torch.nn.Module, train_loader, hardware: Hardware) -> dict:
        """Trainer hooks a model needs beyond the engine's (R-CNN: SVMs and box regressors fitted on cached CNN
        features after the fine-tuning epochs), registered before validation."""
        from cvtool.tasks.detection_proposals import ClassifierFitHook

        fits = hasattr(getattr(model, "module", model), "fit_classifiers")
        return {"fit_classifiers": ClassifierFitHook(self, train_loader, hardware)} if fits else {}

    def ground_truth(self, dataset: DetectionSet, count: int) -> list[dict]:
        """The first `count` images' annotations as outputs `draw_overlays` takes (every box scored 1)."""
        outputs = []
        for index in range(count):
            target = dataset[index][1]
            outputs.append({"boxes": target["boxes"].as_subclass(torch.Tensor), "labels": target["labels"],
                            "scores": torch.ones(len(target["labels"])),
                            **({"masks": target["masks"][:, None].float()} if "masks" in target else {})})
        return outputs

    def draw_overlays(self, directory: Path, dataset: DetectionSet, outputs: list[dict], limit: int | None) -> int:
        """The first `limit` images with their boxes, "class score" labels (and masks) above the threshold."""
        directory.mkdir(parents=True, exist_ok=True)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        for index in range(count):
            image, target = dataset[index]
            self.annotate(image, outputs[index], dataset.classes).save(
                directory / f"{index:05d}_{target['image_id']}.png")
        return count

    def annotate(self, image: torch.Tensor, output: dict, classes: list[str]):
        """The uint8 image with the boxes, "class score" labels (and masks) scoring at least task.overlay_score."""
        from cvtool.viz.draw import boxes_overlay

        keep = output["scores"] >= self.cfg["overlay_score"]
        labels = [f"{classes[int(k)]} {float(s):.2f}" for k, s in zip(output["labels"][keep], output["scores"][keep])]
        masks = output["masks"][keep, 0] > 0.5 if "masks" in output else None
        return boxes_overlay(image, output["boxes"][keep], labels, masks)

    def frame_batch(self, frames: list[torch.Tensor], transform) -> tuple[list, list]:
        """uint8 video frames as the batch `preprocess` takes, transformed as `open_source` transforms images."""
        from torchvision import tv_tensors

        images = [tv_tensors.Image(frame) for frame in frames]
        images = [transform(image) if transform else image for image in images]
        return images, [{"image_id": i} for i in range(len(images))]

    def frame_results(self, frames: list[torch.Tensor], batch, outputs: list[dict], classes: list[str]) -> list:
        """Per frame: boxes [x1, y1, x2, y2] in the frame's pixels, class names and scores of the detections scoring
        at least task.overlay_score, and the annotated image."""
        results = []
        for frame, image, output in zip(frames, batch[0], outputs):
            keep = output["scores"] >= self.cfg["overlay_score"]
            scale = torch.tensor([frame.shape[-1] / image.shape[-1], frame.shape[-2] / image.shape[-2]] * 2)
            record = {"boxes": (output["boxes"][keep] * scale).tolist(),
                      "labels": [classes[int(k)] for k in output["labels"][keep]],
                      "scores": output["scores"][keep].tolist()}
            results.append((record, self.annotate(image, output, classes)))
        return results
