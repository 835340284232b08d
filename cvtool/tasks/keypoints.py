"""Keypoints adapter: COCO keypoints data, Keypoint R-CNN (whole images: a loss dict in train mode, per-image
boxes + keypoints in eval mode) or the top-down heatmap network (person crops: Gaussian target heatmaps, every
stack supervised), OKS-AP and PCK through one evaluator, COCO keypoint results and skeleton overlays."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import v2

from cvtool.data.coco_keypoints import KeypointFlip, KeypointSet, open_keypoint_set
from cvtool.data.roots import prepared_root
from cvtool.engine.hardware import Hardware
from cvtool.errors import CvtoolError
from cvtool.metrics.base import Baseline
from cvtool.models import create_model

from .detection import checked_loss_weights, label_offset
from .images import NOT_BUILDER_ARGS, Normaliser

IMAGE_MODELS = ("keypoint_rcnn",)  # models that find people themselves; every other keypoint model is top-down


class KeypointsTask:
    name = "keypoints"
    amp_inference = False  # joints decoded from bf16 heatmaps/boxes lose sub-pixel precision (as detection)

    def __init__(self, task_cfg: dict, dataset_cfg: dict, model_cfg: dict | None = None):
        self.cfg, self.dataset_cfg, self.model_cfg = task_cfg, dataset_cfg, model_cfg or {}
        self.top_down = self.model_cfg.get("name") not in IMAGE_MODELS
        self.normalise = Normaliser(dataset_cfg["mean"], dataset_cfg["std"])
        self.flip_perm: list[int] | None = None  # left/right swap of the data's keypoints, set when a split opens
        self._baseline: Baseline | None = None
        self._layout: KeypointSet | None = None  # names, skeleton and flip map of dataset.ann_file (video frames)

    @property
    def metric(self) -> str:
        return self.cfg["metric"]

    # --- building ------------------------------------------------------------------------------------------
    def open_split(self, split: str, transform, *, skip_invalid: bool, seed: int, classes: list[str] | None = None,
                   train: bool = False, problems: list[str] | None = None):
        """The split's images (Keypoint R-CNN) or its person crops (top-down); `transform` is photometric (it sees
        the image only: the task does the geometry, which must swap left and right joints)."""
        images = self.open_images(split, skip_invalid=skip_invalid, train=train, problems=problems, classes=classes)
        self.flip_perm = images.flip
        if not self.top_down:
            images.transform = v2.Compose([KeypointFlip(images.flip), _ImageOnly(transform)]) if train else \
                _ImageOnly(transform)
            return images.cache() if self.dataset_cfg.get("cache") and problems is None else images
        if self.dataset_cfg.get("cache") and problems is None:  # (`cvtool data check` decodes every image itself)
            images.cache()
        return self.person_crops(images, train=train, transform=transform)

    def open_images(self, split: str, *, skip_invalid: bool = False, train: bool = False,
                    problems: list[str] | None = None, classes: list[str] | None = None) -> KeypointSet:
        ds = self.dataset_cfg
        root = prepared_root(ds)
        train_split = split == ds.get("train_split") and split != ds.get("split")
        ann_file = ds["train_ann_file" if train_split else "ann_file"]
        image_dir = ds["train_image_dir" if train_split else "image_dir"]
        images = open_keypoint_set(root, ann_file, image_dir, train=train, skip_invalid=skip_invalid,
                                   problems=problems, sigmas=ds.get("sigmas"), flip_map=ds.get("flip_map"))
        if classes is not None and list(classes) != list(images.classes):
            raise CvtoolError(f"the model knows categories {list(classes)} but {ann_file} has {images.classes}",
                              where=str(ann_file), fix="evaluate on data with the training data's categories")
        return images

    def person_crops(self, images: KeypointSet, *, train: bool, transform=None, whole_images: bool = False):
        """Top-down items: one crop per annotated person (training; evaluation with task.person_boxes=gt), per box
        of a detector's results file (task.person_boxes=PATH), or per image (`whole_images`: unannotated images
        without a boxes file, each taken as one person's box)."""
        from cvtool.data.top_down import TopDownSet, indexed_person_boxes, read_person_boxes

        c = self.cfg
        boxes = None
        if not train and c["person_boxes"] != "gt":
            boxes = indexed_person_boxes(read_person_boxes(c["person_boxes"], images.coco, c["min_box_score"]),
                                         images)
        elif whole_images:
            boxes = [(i, [0.0, 0.0, *item.size], 1.0, 0) for i, item in enumerate(images.items)]
        crops = TopDownSet(images, input_size=tuple(c["input_size"]), stride=4, sigma=c["heatmap_sigma"],
                           padding=c["box_padding"], train=train, flip_perm=images.flip,
                           scale_jitter=c["scale_jitter"], rotation=c["rotation"], rotation_prob=c["rotation_prob"],
                           person_boxes=boxes)
        crops.image_transform = transform
        return crops

    def build_model(self, model_cfg: dict, num_classes: int) -> torch.nn.Module:
        kwargs = {k: v for k, v in model_cfg.items() if k not in NOT_BUILDER_ARGS}
        if self.top_down:
            kwargs["input_size"] = list(self.cfg["input_size"])
        return create_model(model_cfg["name"], num_classes=num_classes, in_channels=self.dataset_cfg["channels"],
                            weights=model_cfg.get("weights"), **kwargs)

    def build_evaluator(self, dataset):
        """OKS-AP (pycocotools, the dataset's sigmas) and PCK over every image of the split's annotations."""
        from cvtool.metrics.keypoints import KeypointEvaluator

        images = image_set(dataset)
        return KeypointEvaluator(_restricted(images.coco, [it.image_id for it in images.items]), images.sigmas,
                                 self.cfg["pck_threshold"], images.keypoint_names, self.cfg["coco_backend"])

    def trivial_baseline(self, evaluator) -> Baseline:
        """Top-down on ground-truth boxes: the mean pose (each joint at its mean position relative to the box)
        placed in every box scores well above 0; finding no one (Keypoint R-CNN) scores 0."""
        if not self.top_down or self.cfg["person_boxes"] != "gt":
            return Baseline(0.0, "no-person")
        if self._baseline is None:
            value = mean_pose_metrics(evaluator).get("keypoints", {}).get("AP")
            self._baseline = Baseline(float(value or 0.0), "mean-pose")
        return self._baseline

    # --- steps ---------------------------------------------------------------------------------------------
    def preprocess(self, batch, hardware: Hardware) -> dict:
        device = hardware.device
        if self.top_down:
            crops, heatmaps, weights, metas = batch
            return {"image": self.normalise(crops, hardware), "heatmaps": heatmaps.to(device, non_blocking=True),
                    "weights": weights.to(device, non_blocking=True), "metas": metas,
                    "image_id": [m["image_id"] for m in metas]}
        images, targets = batch
        return {"images": [image.to(device, non_blocking=True).float().div_(255) for image in images],
                "targets": [{k: v.to(device, non_blocking=True) for k, v in t.items()
                             if k in ("boxes", "labels", "keypoints")} for t in targets],
                "image_id": [t["image_id"] for t in targets]}

    def batch_size(self, batch: dict) -> int:
        return len(batch["image"] if self.top_down else batch["images"])

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        if self.top_down:
            stacks = model(batch["image"])
            stacks = stacks if isinstance(stacks, (list, tuple)) else [stacks]
            losses = [heatmap_loss(h, batch["heatmaps"], batch["weights"]) for h in stacks]
            return {"loss": sum(losses), "last_stack_loss": losses[-1].detach()}
        offset = label_offset(model)
        targets = [{**t, "labels": t["labels"] + offset} for t in batch["targets"]]
        losses = model(batch["images"], targets)
        weights = checked_loss_weights(self.cfg, losses)
        return {"loss": sum(v * float(weights.get(k, 1.0)) for k, v in losses.items()),
                **{k: v.detach() for k, v in losses.items()}}

    def inference_step(self, model: torch.nn.Module, batch: dict) -> list[dict]:
        """Per person crop (top-down) or per image (Keypoint R-CNN): {"keypoints": (N, K, 3) x, y, score in the
        original image's pixels, "scores": (N,), "labels": (N,) 0-based categories}."""
        if self.top_down:
            from cvtool.data.top_down import decode

            heatmaps = model(batch["image"]).float()
            flipped = model(batch["image"].flip(-1)).float() if self.cfg["flip_test"] else None
            return decode(heatmaps, batch["metas"], flip_heatmaps=flipped, flip_perm=self.flip_perm, stride=4,
                          sigma=self.cfg["heatmap_sigma"])
        offset = label_offset(model)
        outputs = []
        for o in model(batch["images"]):
            keypoints = torch.cat([o["keypoints"][..., :2], o["keypoints_scores"][..., None]], dim=-1)
            outputs.append({"keypoints": keypoints, "scores": o["scores"], "labels": o["labels"] - offset,
                            "boxes": o["boxes"]})
        return outputs

    # --- results ---------------------------------------------------------------------------------------------
    def write_results(self, directory: Path, dataset, outputs: list[dict], split: str) -> list[Path]:
        """A COCO keypoint results JSON (`results.json`: what `cvtool eval predictions=` reads)."""
        from cvtool.data.coco_json import write_results
        from cvtool.metrics.keypoints import keypoint_results

        images = image_set(dataset)
        categories = sorted(c["id"] for c in images.coco["categories"])
        results = [r for image_id, o in zip(output_image_ids(dataset), outputs)
                   for r in keypoint_results(image_id, o, categories)]
        return [write_results(directory / "results.json", results)]

    def open_source(self, files: list[Path], transform, class_names: list[str], source: Path):
        """Plain image files: Keypoint R-CNN finds the people; top-down models pose the boxes of
        task.person_boxes=PATH, else take each whole image as one person's box."""
        from cvtool.data.coco_keypoints import source_set

        images = source_set(files, self.dataset_cfg.get("ann_file"), class_names, str(source),
                            flip_map=self.dataset_cfg.get("flip_map"), sigmas=self.dataset_cfg.get("sigmas"))
        self.flip_perm = images.flip
        if not self.top_down:
            images.transform = _ImageOnly(transform)
            return images
        return self.person_crops(images, train=False, transform=transform, whole_images=True)

    def ground_truth(self, dataset, count: int) -> list[dict]:
        """The first `count` images' annotated people as outputs `draw_overlays` takes (v>0 joints scored 1)."""
        images = image_set(dataset)
        outputs = []
        for item in images.items[:count]:
            keep = ~item.iscrowd
            points = torch.as_tensor(item.keypoints[keep], dtype=torch.float32)
            points[..., 2] = (points[..., 2] > 0).float()
            outputs.append({"keypoints": points, "scores": torch.ones(len(points)),
                            "labels": torch.as_tensor(item.labels[keep]),
                            "boxes": torch.as_tensor(item.boxes[keep], dtype=torch.float32)})
        return outputs

    def per_image(self, dataset, outputs: list[dict]) -> list[dict]:
        """Outputs per image of the dataset's image set (top-down outputs come one per person crop)."""
        images = image_set(dataset)
        if images is dataset:
            return outputs
        grouped: dict = defaultdict(list)
        for meta_index, output in zip(crop_image_indices(dataset), outputs):
            grouped[meta_index].append(output)
        k = len(images.keypoint_names)
        merged = []
        for index in range(len(images)):
            parts = grouped.get(index, [])
            merged.append({"keypoints": torch.cat([p["keypoints"] for p in parts]) if parts else torch.zeros(0, k, 3),
                           "scores": torch.cat([p["scores"] for p in parts]) if parts else torch.zeros(0),
                           "labels": torch.cat([p["labels"] for p in parts]) if parts else torch.zeros(0, dtype=int)})
        return merged

    def draw_overlays(self, directory: Path, dataset, outputs: list[dict], limit: int | None) -> int:
        """The first `limit` images with their people's skeletons (colour per limb), joints and scores."""
        directory.mkdir(parents=True, exist_ok=True)
        images = image_set(dataset)
        outputs = self.per_image(dataset, outputs)
        count = len(images) if limit is None else min(limit, len(images))
        for index in range(count):
            image = images.image(index)
            self.annotate(image, outputs[index], images).save(
                directory / f"{index:05d}_{images.items[index].image_id}.png")
        return count

    def annotate(self, image: torch.Tensor, output: dict, images: KeypointSet):
        """The uint8 image with the people scoring at least task.overlay_score: their skeletons and the joints
        scoring at least task.joint_score."""
        from cvtool.viz.skeleton import skeleton_overlay

        keep = output["scores"] >= self.cfg["overlay_score"]
        labels = [f"{images.classes[int(k)]} {float(s):.2f}" for k, s in
                  zip(output["labels"][keep], output["scores"][keep])]
        return skeleton_overlay(image, output["keypoints"][keep], images.skeleton, images.keypoint_names,
                                scores=output["keypoints"][keep][..., 2], min_score=self.cfg["joint_score"],
                                boxes=output["boxes"][keep] if "boxes" in output else None, labels=labels)

    # --- video -----------------------------------------------------------------------------------------------
    def frame_batch(self, frames: list[torch.Tensor], transform):
        """uint8 video frames as the batch `preprocess` takes: the frames (Keypoint R-CNN), or one crop per frame
        around the whole frame (top-down; its people are posed as one person each)."""
        from cvtool.data.keypoint_sets import KeypointItem

        layout = self.layout()
        k = len(layout.keypoint_names)
        items = [KeypointItem(i, Path(f"frame{i}"), (frame.shape[-1], frame.shape[-2]), np.zeros((0, 4)),
                              np.zeros(0, np.int64), np.zeros((0, k, 3)), np.zeros(0, bool), np.zeros(0))
                 for i, frame in enumerate(frames)]
        images = KeypointSet(items, layout.classes, layout.keypoint_names, layout.skeleton, layout.flip,
                             layout.sigmas, {"images": [], "annotations": [], "categories": []}, "video", train=False)
        images.images = list(frames)
        images.transform = _ImageOnly(transform)
        if not self.top_down:
            return KeypointSet.collate([images[i] for i in range(len(images))])
        crops = self.person_crops(images, train=False, transform=transform, whole_images=True)
        return crops.collate([crops[i] for i in range(len(crops))])

    def frame_results(self, frames: list[torch.Tensor], batch, outputs: list[dict], classes: list[str]) -> list:
        """Per frame: the people scoring at least task.overlay_score ({score, keypoints: [[x, y, score], ...]} in
        the frame's pixels) and the annotated frame."""
        layout = self.layout()
        results = []
        for frame, image, output in zip(frames, batch[0] if not self.top_down else frames, outputs):
            scale = torch.tensor([frame.shape[-1] / image.shape[-1], frame.shape[-2] / image.shape[-2], 1.0])
            output = {**output, "keypoints": output["keypoints"] * scale}
            if "boxes" in output:
                output["boxes"] = output["boxes"] * scale[[0, 1, 0, 1]]
            keep = output["scores"] >= self.cfg["overlay_score"]
            record = {"people": [{"label": classes[int(k)], "score": float(s), "keypoints": p.tolist()} for k, s, p in
                                 zip(output["labels"][keep], output["scores"][keep], output["keypoints"][keep])]}
            results.append((record, self.annotate(frame, output, layout)))
        return results

    def layout(self) -> KeypointSet:
        """The categories, keypoint names, skeleton and flip map of the data (dataset.ann_file), no images."""
        from cvtool.data.coco_keypoints import source_set

        if self._layout is None:
            self._layout = source_set([], self.dataset_cfg.get("ann_file"), None, "layout",
                                      flip_map=self.dataset_cfg.get("flip_map"), sigmas=self.dataset_cfg.get("sigmas"))
            self.flip_perm = self._layout.flip
        return self._layout


def heatmap_loss(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the heatmaps, each joint weighted (0: unlabelled or outside the crop), as the
    top-down networks are trained (Newell et al. 2016; Xiao et al. 2018)."""
    squared = (predicted.float() - target) ** 2 * weights[..., None, None]
    return squared.mean() * 0.5


def image_set(dataset) -> KeypointSet:
    """The KeypointSet of images behind a dataset (itself, or the images a TopDownSet crops people from)."""
    return dataset if isinstance(dataset, KeypointSet) else dataset.images


def crop_image_indices(dataset) -> list[int]:
    """The image index (in `image_set(dataset)`) of every item of `dataset`."""
    if isinstance(dataset, KeypointSet):
        return list(range(len(dataset)))
    return [instance.index for instance in dataset.instances]


def output_image_ids(dataset) -> list:
    """The COCO image id of every item of `dataset` (one per image, or per person crop)."""
    items = image_set(dataset).items
    return [items[i].image_id for i in crop_image_indices(dataset)]


def _restricted(coco: dict, image_ids: list) -> dict:
    """The annotations of `image_ids` only (a data.limit subset is evaluated on its own images)."""
    wanted = set(image_ids)
    return {**coco, "images": [im for im in coco["images"] if im["id"] in wanted],
            "annotations": [a for a in coco.get("annotations", []) if a["image_id"] in wanted]}


def mean_pose_metrics(evaluator) -> dict:
    """The metrics of placing every joint at its mean box-relative position (over the evaluated split's labelled
    joints) in every annotated person's box."""
    from cvtool.metrics.keypoints import KeypointEvaluator

    anns = [a for a in evaluator.gt.dataset["annotations"] if not a.get("iscrowd") and a.get("num_keypoints", 0)]
    if not anns:
        return {}
    points = np.asarray([a["keypoints"] for a in anns], dtype=np.float64).reshape(len(anns), -1, 3)
    boxes = np.asarray([a["bbox"] for a in anns], dtype=np.float64)
    relative = (points[..., :2] - boxes[:, None, :2]) / np.maximum(boxes[:, None, 2:], 1e-6)
    labelled = points[..., 2] > 0
    mean = np.stack([np.nanmean(np.where(labelled, relative[..., d], np.nan), axis=0) for d in (0, 1)], -1)
    mean = np.nan_to_num(mean, nan=0.5)
    placed = boxes[:, None, :2] + mean[None] * boxes[:, None, 2:]
    baseline = KeypointEvaluator(evaluator.gt.dataset, evaluator.sigmas, evaluator.pck_threshold,
                                 evaluator.keypoint_names, evaluator.backend)
    categories = sorted(c["id"] for c in evaluator.gt.dataset["categories"])
    for ann, xy in zip(anns, placed):
        baseline.process({"image_id": [ann["image_id"]]},
                         [{"keypoints": np.concatenate([xy, np.ones((len(xy), 1))], 1)[None],
                           "scores": np.ones(1), "labels": np.array([categories.index(ann["category_id"])])}])
    return baseline.evaluate()


class _ImageOnly:
    """A photometric transform (dataset.*_transforms) applied to the image of an (image, target) pair."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, image, target):
        return (self.transform(image) if self.transform else image), target
