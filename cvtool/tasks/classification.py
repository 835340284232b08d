"""Classification adapter: datasets, model, evaluator and the cross-entropy training step."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
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


class ClassificationTask:
    name = "classification"
    amp_inference = True

    def __init__(self, task_cfg: dict, dataset_cfg: dict, model_cfg: dict | None = None):
        self.cfg, self.dataset_cfg = task_cfg, dataset_cfg
        self.normalise = Normaliser(dataset_cfg["mean"], dataset_cfg["std"])

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
        return dataset

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
        size = self.dataset_cfg["image_size"]
        images = ImageFiles(files, self.dataset_cfg["channels"],
                            v2.Compose([*([transform] if transform else []), v2.Resize((size, size))]))
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

    # --- steps ---------------------------------------------------------------------------------------------
    def preprocess(self, batch, hardware: Hardware) -> dict:
        """uint8 images from the loader -> normalised float on the device (cheaper than in the workers)."""
        images, target = batch
        return {"image": self.normalise(images, hardware),
                "target": torch.as_tensor(target).to(hardware.device, non_blocking=True)}

    def batch_size(self, batch: dict) -> int:
        return batch["image"].shape[0]

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        output = model(batch["image"])
        smoothing = self.cfg["label_smoothing"]
        if isinstance(output, torch.Tensor):
            return {"loss": F.cross_entropy(output, batch["target"], label_smoothing=smoothing)}
        # GoogLeNet/Inception train-mode outputs: (logits, *aux_logits); aux heads weighted 0.3 as in GoogLeNet
        main, *aux = [o for o in output if o is not None]
        main_loss = F.cross_entropy(main, batch["target"], label_smoothing=smoothing)
        aux_loss = sum(F.cross_entropy(a, batch["target"], label_smoothing=smoothing) for a in aux)
        return {"loss": main_loss + 0.3 * aux_loss, "main_loss": main_loss.detach()}

    def inference_step(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["image"])
