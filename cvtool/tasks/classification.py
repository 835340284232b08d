"""Classification adapter: datasets, model, evaluator and the cross-entropy training step."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import v2

from cvtool.data.classification_sets import ClassificationSet, open_classification_set
from cvtool.data.image_files import ImageFiles
from cvtool.data.logits_files import write_classification_predictions
from cvtool.data.roots import prepared_root
from cvtool.engine.hardware import Hardware
from cvtool.errors import CvtoolError
from cvtool.metrics.base import Baseline
from cvtool.metrics.classification import ClassificationEvaluator, constant_prediction_accuracy
from cvtool.viz.draw import labelled

from .images import Normaliser, registry_model
from .losses import balanced_weights, class_weights, focal_loss


class ClassificationTask:
    name = "classification"
    amp_inference = True

    def __init__(self, task_cfg: dict, dataset_cfg: dict, model_cfg: dict | None = None):
        self.cfg, self.dataset_cfg = task_cfg, dataset_cfg
        self.normalise = Normaliser(dataset_cfg["mean"], dataset_cfg["std"])
        self.class_weight: torch.Tensor | None = None  # task.class_weights, set when the training split opens

    @property
    def metric(self) -> str:
        return self.cfg["metric"]

    # --- building ------------------------------------------------------------------------------------------
    def dataset_root(self) -> Path | None:
        """The dataset root, generating the synthetic shapes data first when the dataset is synthetic."""
        return prepared_root(self.dataset_cfg)

    def open_split(self, split: str, transform, *, skip_invalid: bool, seed: int,
                   classes: list[str] | None = None, train: bool = False,
                   problems: list[str] | None = None) -> ClassificationSet:
        ds = self.dataset_cfg
        dataset = open_classification_set(ds["kind"], self.dataset_root(), split, transform=transform,
                                          skip_invalid=skip_invalid, download=ds["download"],
                                          val_fraction=ds["val_fraction"], seed=seed, classes=classes,
                                          cache=ds["cache"], channels=ds["channels"])
        if dataset.channels != ds["channels"]:
            raise CvtoolError(f"images have {dataset.channels} channel(s) but dataset.channels={ds['channels']}",
                              where=dataset.source, fix=f"set dataset.channels={dataset.channels}")
        if train:
            self._check_loss()
            self.class_weight = class_weights(self.cfg["class_weights"], dataset.classes,
                                              lambda: balanced_weights(dataset.targets, len(dataset.classes)))
        return dataset

    def _check_loss(self) -> None:
        """task.loss and task.focal_gamma, checked before training starts."""
        loss, gamma = self.cfg["loss"], self.cfg["focal_gamma"]
        if loss not in ("cross_entropy", "focal"):
            raise CvtoolError(f"unknown task.loss {loss!r}", where="task.loss", fix="task.loss=cross_entropy or focal")
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or gamma < 0:
            raise CvtoolError(f"task.focal_gamma must be a number >= 0, got {gamma!r}", where="task.focal_gamma",
                              fix="e.g. task.focal_gamma=2 (Lin et al.); 0 is cross-entropy")

    def build_model(self, model_cfg: dict, num_classes: int) -> torch.nn.Module:
        return registry_model(model_cfg, self.dataset_cfg, num_classes)

    def build_evaluator(self, dataset) -> ClassificationEvaluator:
        return ClassificationEvaluator(len(dataset.classes), topk=self.cfg["topk"])

    def trivial_baseline(self, evaluator: ClassificationEvaluator) -> Baseline | None:
        """top-1/top-k of always predicting the most frequent classes of the split `evaluator` has evaluated (None
        for another metric)."""
        k = {"top1": 1, "top5": evaluator.k}.get(self.metric)
        value = constant_prediction_accuracy(evaluator.confusion.sum(axis=1), k) if k else None
        return None if value is None else Baseline(value, "majority-class")

    # --- predict ---------------------------------------------------------------------------------------------
    def open_source(self, files: list[Path], transform, class_names: list[str], source: Path) -> ImageFiles:
        """Plain image files resized to the training size; targets when they sit in <source>/<class>/ folders."""
        images = ImageFiles(files, self.dataset_cfg["channels"], self.source_transform(transform))
        parents = [f.parent.name for f in files]
        in_class_dirs = source.is_dir() and all(f.parent.parent == source for f in files)
        images.targets = ([class_names.index(p) for p in parents] if in_class_dirs and set(parents) <= set(class_names)
                          else None)
        images.classes = class_names
        return images

    def write_results(self, directory: Path, dataset, logits: torch.Tensor, split: str) -> list[Path]:
        """predictions.csv, logits.npy and (targets known) targets.npy: what `eval predictions=` reads."""
        names = [str(f) for f in dataset.files] if dataset.files else [f"{split}#{i}" for i in range(len(dataset))]
        targets = getattr(dataset, "targets", None)
        return write_classification_predictions(directory, names, logits.numpy(), targets, dataset.classes)

    def ground_truth(self, dataset, count: int) -> torch.Tensor:
        """The first `count` labels as outputs `draw_overlays` takes: one-hot logits, drawn as "class 1.00"."""
        return F.one_hot(torch.as_tensor(dataset.targets[:count]), len(dataset.classes)).float() * 100

    def draw_overlays(self, directory: Path, dataset, logits: torch.Tensor, limit: int | None) -> int:
        """The first `limit` images (files only) labelled with the predicted class and its probability."""
        directory.mkdir(parents=True, exist_ok=True)
        score, label = logits.softmax(dim=1).max(dim=1)
        drawn = 0
        for index, name in enumerate(dataset.files or []):
            if limit is not None and drawn >= limit:
                break
            path = Path(name)
            labelled(path, f"{dataset.classes[label[index]]} {score[index]:.2f}").save(
                directory / f"{index:05d}_{path.stem}.png")
            drawn += 1
        return drawn

    def source_transform(self, transform) -> v2.Transform:
        """The eval transforms, then a resize to the training size (images and video frames of any size)."""
        size = self.dataset_cfg["image_size"]
        return v2.Compose([*([transform] if transform else []), v2.Resize((size, size))])

    def frame_batch(self, frames: list[torch.Tensor], transform) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 video frames as the batch `preprocess` takes, transformed as `open_source` transforms images."""
        resize = self.source_transform(transform)
        return torch.stack([resize(frame) for frame in frames]), torch.zeros(len(frames), dtype=torch.int64)

    def frame_results(self, frames: list[torch.Tensor], batch, logits: torch.Tensor,
                      classes: list[str]) -> list[tuple[dict, Image.Image]]:
        """Per frame: the top-k classes with their probabilities, and the frame labelled with the first."""
        from torchvision.transforms.v2.functional import to_pil_image

        top = logits.softmax(dim=1).topk(min(self.cfg["topk"], len(classes)), dim=1)
        results = []
        for frame, probs, indices in zip(frames, top.values, top.indices):
            names = [classes[i] for i in indices]
            results.append(({"classes": names, "probs": probs.tolist()},
                             labelled(to_pil_image(frame), f"{names[0]} {probs[0]:.2f}")))
        return results

    # --- steps ---------------------------------------------------------------------------------------------
    def preprocess(self, batch, hardware: Hardware) -> dict:
        """uint8 images from the loader -> normalised float on the device (cheaper than in the workers)."""
        images, target = batch
        return {"image": self.normalise(images, hardware),
                "target": torch.as_tensor(target).to(hardware.device, non_blocking=True)}

    def batch_size(self, batch: dict) -> int:
        return batch["image"].shape[0]

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """task.loss (cross_entropy | focal) with task.class_weights and label smoothing; `target` holds class
        indices, or class probabilities after MixUp/CutMix."""
        cfg, weight = self.cfg, self.class_weight
        if weight is not None and weight.device != logits.device:
            weight = self.class_weight = weight.to(logits.device)
        if cfg["loss"] == "focal":
            return focal_loss(logits, target, gamma=cfg["focal_gamma"], weight=weight,
                              label_smoothing=cfg["label_smoothing"])
        return F.cross_entropy(logits, target, weight=weight, label_smoothing=cfg["label_smoothing"])

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        output = model(batch["image"])
        if isinstance(output, torch.Tensor):
            return {"loss": self.loss(output, batch["target"])}
        # GoogLeNet/Inception train-mode outputs: (logits, *aux_logits); aux heads weighted 0.3 as in GoogLeNet
        main, *aux = [o for o in output if o is not None]
        main_loss = self.loss(main, batch["target"])
        aux_loss = sum(self.loss(a, batch["target"]) for a in aux)
        return {"loss": main_loss + 0.3 * aux_loss, "main_loss": main_loss.detach()}

    def inference_step(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["image"])
