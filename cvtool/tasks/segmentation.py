"""Semantic segmentation adapter: VOC / mask-folder datasets, per-pixel cross-entropy (void ignored, auxiliary
heads weighted), one confusion matrix for evaluation, palette PNGs and colour overlays from predict."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cvtool.data.index_png import write_index_png
from cvtool.data.roots import prepared_root
from cvtool.data.segmentation_sets import (
    SegmentationSet,
    mask_folder_items,
    open_segmentation_set,
    unlabelled_set,
    voc_seg_items,
)
from cvtool.engine.hardware import Hardware
from cvtool.errors import CvtoolError
from cvtool.metrics.base import Baseline
from cvtool.metrics.segmentation import SegmentationEvaluator, constant_prediction_metrics

from .dense_inference import dense_scores
from .images import Normaliser, registry_model
from .losses import class_weights, median_frequency_weights


def soft_dice_loss(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int, smooth: float = 1.0) -> torch.Tensor:
    """1 - the mean over classes of the soft Dice coefficient (Milletari et al. 2016) of the softmax and the
    one-hot mask over the batch's non-void pixels: every class weighs the same, however few its pixels, which
    shortens the all-background phase of training on small objects."""
    valid = (mask != ignore_index).unsqueeze(1)
    probs = logits.softmax(dim=1) * valid
    one_hot = F.one_hot(torch.where(valid[:, 0], mask, 0), logits.shape[1]).permute(0, 3, 1, 2) * valid
    dims = (0, 2, 3)
    overlap = (probs * one_hot).sum(dims)
    return 1 - ((2 * overlap + smooth) / (probs.sum(dims) + one_hot.sum(dims) + smooth)).mean()


class SegmentationTask:
    name = "segmentation"
    amp_inference = True

    def __init__(self, task_cfg: dict, dataset_cfg: dict, model_cfg: dict | None = None):
        self.cfg, self.dataset_cfg = task_cfg, dataset_cfg
        self.normalise = Normaliser(dataset_cfg["mean"], dataset_cfg["std"])
        self.ignore_index = dataset_cfg.get("ignore_index")
        self.class_weight: torch.Tensor | None = None  # task.class_weights, set when the training split opens

    @property
    def metric(self) -> str:
        return self.cfg["metric"]

    # --- building ------------------------------------------------------------------------------------------
    def open_split(self, split: str, transform, *, skip_invalid: bool, seed: int, classes: list[str] | None = None,
                   train: bool = False, problems: list[str] | None = None) -> SegmentationSet:
        ds = self.dataset_cfg
        root = prepared_root(ds)
        if ds["kind"] == "voc_seg":
            items, source = voc_seg_items(root, split), f"VOC {root} [{split}]"
        elif ds["kind"] == "mask_folder":
            which = "train_" if split == ds.get("train_split") and split != ds.get("split") else ""
            image_dir, mask_dir = Path(ds[f"{which}image_dir"]), Path(ds[f"{which}mask_dir"])
            items, source = mask_folder_items(image_dir, mask_dir), f"{image_dir} + {mask_dir}"
        else:
            raise CvtoolError(f"dataset kind {ds['kind']!r} is not a segmentation dataset", where="dataset.kind",
                              fix="use dataset=voc_seg, shapes_seg or mask_folder")
        dataset = open_segmentation_set(items, list(classes or ds["classes"]), source, num_classes=ds["num_classes"],
                                        ignore_index=self.ignore_index, skip_invalid=skip_invalid, problems=problems,
                                        keep_masks=bool(ds.get("cache")))
        dataset.transform = transform
        if train:
            masks = dataset.masks if dataset.masks is not None else map(dataset._read_mask, range(len(dataset)))
            self.class_weight = class_weights(self.cfg["class_weights"], dataset.classes, lambda: (
                median_frequency_weights(masks, len(dataset.classes), self.ignore_index)))
        return dataset.cache() if ds.get("cache") else dataset

    def build_model(self, model_cfg: dict, num_classes: int) -> torch.nn.Module:
        return registry_model(model_cfg, self.dataset_cfg, num_classes)

    def build_evaluator(self, dataset: SegmentationSet) -> SegmentationEvaluator:
        return SegmentationEvaluator(len(dataset.classes), self.ignore_index)

    def trivial_baseline(self, evaluator: SegmentationEvaluator) -> Baseline | None:
        """The metric of predicting the most frequent class (background) everywhere on the split `evaluator` has
        evaluated (None for a metric without one number)."""
        value = constant_prediction_metrics(evaluator.confusion).get(self.metric)
        if not isinstance(value, float):
            return None
        majority = int(evaluator.confusion.sum(axis=1).argmax())
        classes = self.dataset_cfg.get("classes") or []
        name = classes[majority] if majority < len(classes) else f"class-{majority}"
        return Baseline(value, f"{name}-only")

    # --- steps ---------------------------------------------------------------------------------------------
    def preprocess(self, batch, hardware: Hardware) -> dict:
        images, masks, sizes = batch
        return {"image": self.normalise(images, hardware), "mask": masks.to(hardware.device, non_blocking=True),
                "sizes": sizes}

    def batch_size(self, batch: dict) -> int:
        return batch["image"].shape[0]

    def _loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (void ignored; task.class_weights), plus task.dice_weight x the soft Dice loss."""
        ignore = self.ignore_index if self.ignore_index is not None else -100
        if self.class_weight is not None and self.class_weight.device != logits.device:
            self.class_weight = self.class_weight.to(logits.device)
        loss = F.cross_entropy(logits.float(), mask, weight=self.class_weight, ignore_index=ignore)
        weight = self.cfg.get("dice_weight") or 0.0
        return loss + weight * soft_dice_loss(logits.float(), mask, ignore) if weight else loss

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        output = model(batch["image"])
        if not isinstance(output, dict):
            return {"loss": self._loss(output, batch["mask"])}
        main = self._loss(output["out"], batch["mask"])
        aux = self._loss(output["aux"], batch["mask"])
        return {"loss": main + self.cfg["aux_weight"] * aux, "main_loss": main.detach(), "aux_loss": aux.detach()}

    def inference_step(self, model: torch.nn.Module, batch: dict) -> list[dict]:
        """Per image: {"labels": (H, W) uint8 class map at the image's own size}."""
        scores = dense_scores(model, batch["image"], scales=self.cfg["tta_scales"], flip=self.cfg["tta_flip"],
                              tile=self.cfg["tile"], overlap=self.cfg["tile_overlap"])
        labels = scores.argmax(1).to(torch.uint8)
        return [{"labels": labels[i, :h, :w]} for i, (h, w) in enumerate(batch["sizes"])]

    # --- predict ---------------------------------------------------------------------------------------------
    def open_source(self, files: list[Path], transform, class_names: list[str], source: Path) -> SegmentationSet:
        dataset = unlabelled_set(files, class_names, str(source), self.ignore_index)
        dataset.transform = transform
        return dataset

    def write_results(self, directory: Path, dataset: SegmentationSet, outputs: list[dict], split: str) -> list[Path]:
        """One VOC palette PNG per image, `masks/<image id>.png` (what `cvtool eval predictions=` reads)."""
        out = directory / "masks"
        for item, output in zip(dataset.items, outputs):
            path = out / f"{item.image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_index_png(path, output["labels"].numpy())
        return [out]

    def ground_truth(self, dataset: SegmentationSet, count: int) -> list[dict]:
        """The first `count` masks as outputs `draw_overlays` takes (void 255 painted in the palette's colour)."""
        return [{"labels": dataset[i][1].as_subclass(torch.Tensor).to(torch.uint8)} for i in range(count)]

    def draw_overlays(self, directory: Path, dataset: SegmentationSet, outputs: list[dict], limit: int | None) -> int:
        """The first `limit` images with the predicted classes painted over them (background left clear)."""
        directory.mkdir(parents=True, exist_ok=True)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        for index in range(count):
            image, _ = dataset[index]
            name = Path(dataset.items[index].image_id).name
            self.annotate(image, outputs[index], dataset.classes).save(directory / f"{index:05d}_{name}.png")
        return count

    def annotate(self, image: torch.Tensor, output: dict, classes: list[str]):
        """The uint8 image with its predicted classes painted over it (background left clear)."""
        from cvtool.viz.draw import class_overlay

        skip = (0,) if classes and classes[0] == "background" else ()
        return class_overlay(image, output["labels"], skip, self.cfg["overlay_alpha"])

    def frame_batch(self, frames: list[torch.Tensor], transform) -> tuple[torch.Tensor, torch.Tensor, list]:
        """uint8 video frames (one size) as the batch `preprocess` takes, transformed as `open_source` transforms
        images; no ground truth, so an empty mask tensor."""
        from torchvision import tv_tensors

        images = [tv_tensors.Image(frame) for frame in frames]
        images = [(transform(image) if transform else image).as_subclass(torch.Tensor) for image in images]
        return (torch.stack(images), torch.empty((len(images), 0, 0), dtype=torch.int64),
                [tuple(image.shape[-2:]) for image in images])

    def frame_results(self, frames: list[torch.Tensor], batch, outputs: list[dict], classes: list[str]) -> list:
        """Per frame: the fraction of its pixels predicted as each class, and the annotated image."""
        results = []
        for image, output in zip(batch[0], outputs):
            counts = torch.bincount(output["labels"].flatten().long(), minlength=len(classes))[:len(classes)]
            record = {"fractions": dict(zip(classes, (counts / max(1, output["labels"].numel())).tolist()))}
            results.append((record, self.annotate(image, output, classes)))
        return results
