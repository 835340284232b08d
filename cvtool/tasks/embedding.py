"""Embedding adapter (Siamese / triplet networks): identity folders split by identity, an embedding network trained
with a contrastive, triplet (online mining) or softmax loss on P×K batches, and verification (LFW 10-fold) and
retrieval metrics on identities never seen in training."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.transforms import v2

from cvtool.data.identity_sets import IdentitySet, identity_set, refuse_overlap, scan_identities, split_identities
from cvtool.data.roots import prepared_root
from cvtool.engine.hardware import Hardware
from cvtool.errors import CvtoolError
from cvtool.metrics.base import Baseline

from .images import Normaliser, registry_model
from .metric_losses import contrastive_loss, mean_pairwise_distance, triplet_loss

log = logging.getLogger("cvtool.embedding")

LOSSES = ("triplet", "contrastive", "softmax")
MINING = ("batch_hard", "semi_hard", "all")


class EmbeddingTask:
    name = "embedding"
    amp_inference = True

    def __init__(self, task_cfg: dict, dataset_cfg: dict, model_cfg: dict | None = None):
        self.cfg, self.dataset_cfg = task_cfg, dataset_cfg
        self.normalise = Normaliser(dataset_cfg["mean"], dataset_cfg["std"])
        self.collapse = CollapseMonitor(task_cfg["collapse_fraction"])
        self.steps = 0  # training steps seen (the collapse warning names the step)
        self._check()

    @property
    def metric(self) -> str:
        return self.cfg["metric"]

    @property
    def warnings(self) -> list[dict]:
        return self.collapse.warnings

    def _check(self) -> None:
        loss, mining = self.cfg["loss"], self.cfg["mining"]
        if loss not in LOSSES:
            raise CvtoolError(f"unknown task.loss {loss!r}", where="task.loss", fix=f"one of {', '.join(LOSSES)}")
        if mining not in MINING:
            raise CvtoolError(f"unknown task.mining {mining!r}", where="task.mining",
                              fix=f"one of {', '.join(MINING)}")

    # --- data ------------------------------------------------------------------------------------------------
    def identity_splits(self) -> tuple[dict, list[str], dict, list[str], object]:
        """(images of the training root, training identities, images of the test root, test identities, pairs
        file or None): the test identities are those of dataset.pairs when that file exists, else a seeded
        dataset.test_fraction of the root's identities; training takes the others (or dataset.train_root's)."""
        from cvtool.data.lfw_pairs import read_pairs

        ds = self.dataset_cfg
        root = prepared_root(ds)
        found = scan_identities(root)
        pairs_file = Path(ds["pairs"]) if ds.get("pairs") else None
        if pairs_file is not None and pairs_file.is_file():
            pairs = read_pairs(pairs_file, {name: {i.number for i in images} for name, images in found.items()})[0]
            test = sorted({p.left[0] for p in pairs} | {p.right[0] for p in pairs})
            rest = [name for name in found if name not in set(test)]
            pairs_source = str(pairs_file)
        else:
            if pairs_file is not None and ds.get("require_pairs"):
                raise CvtoolError("pairs file not found", where=str(pairs_file),
                                  fix="point dataset.pairs at LFW's pairs.txt, or set dataset.pairs=null to "
                                      "generate pairs for a seeded split")
            rest, test = split_identities(list(found), ds["test_fraction"], ds["split_seed"])
            pairs_source = None
        if ds.get("train_root"):
            train_found = scan_identities(Path(ds["train_root"]))
            refuse_overlap(list(train_found), test, str(ds["train_root"]), "dataset.train_root")
            return train_found, sorted(train_found), found, test, pairs_source
        return found, rest, found, test, pairs_source

    def open_split(self, split: str, transform, *, skip_invalid: bool, seed: int, classes: list[str] | None = None,
                   train: bool = False, problems: list[str] | None = None) -> IdentitySet:
        """dataset.train_split: the training identities (their labels are the model's classes); dataset.split:
        the test identities with their verification pairs (refused if any is among the model's `classes`)."""
        ds = self.dataset_cfg
        train_found, train_names, test_found, test_names, pairs_source = self.identity_splits()
        common = {"channels": ds["channels"], "skip_invalid": skip_invalid}
        if split == ds["train_split"]:
            dataset = identity_set(train_found, train_names, source=f"{ds.get('train_root') or ds['root']} "
                                   f"({len(train_names)} training identities)", **common)
        elif split == ds["split"]:
            where = pairs_source or str(ds["root"])
            if classes is not None:
                refuse_overlap(classes, test_names, where, "the model's training identities")
            dataset = identity_set(test_found, test_names, classes=classes, source=f"{ds['root']} "
                                   f"({len(test_names)} test identities)", **common)
            self.attach_pairs(dataset, pairs_source)
        else:
            raise CvtoolError(f"unknown split {split!r}", where=f"dataset.root={ds['root']}",
                              fix=f"use {ds['train_split']} (training identities) or {ds['split']} (test identities)")
        if ds.get("cache") and problems is None:
            dataset.cache()
        dataset.transform = self.sized(transform)
        return dataset

    def attach_pairs(self, dataset: IdentitySet, pairs_source: str | None) -> None:
        """The verification pairs of a test split: dataset.pairs as given, else generated for its identities
        (LFW's format and protocol: dataset.pairs_folds identity-disjoint folds, seeded by dataset.split_seed)."""
        from cvtool.data.lfw_pairs import generate_pairs, read_pairs

        ds = self.dataset_cfg
        if pairs_source is not None:
            dataset.pairs = read_pairs(pairs_source, dataset.available())[0]
            dataset.pairs_source = pairs_source
            return
        dataset.pairs = generate_pairs(dataset.available(), folds=ds["pairs_folds"], per_fold=ds["pairs_per_fold"],
                                       seed=ds["split_seed"])
        dataset.pairs_source = (f"generated: {ds['pairs_folds']} folds x {ds['pairs_per_fold']} matched + "
                                f"{ds['pairs_per_fold']} mismatched pairs, seed {ds['split_seed']}")
        log.info("verification pairs %s", dataset.pairs_source)

    def sized(self, transform) -> v2.Transform:
        """The configured transforms, then a resize to dataset.image_size (identity folders mix sizes)."""
        size = self.dataset_cfg["image_size"]
        return v2.Compose([*([transform] if transform else []), v2.Resize((size, size), antialias=True)])

    # --- building ----------------------------------------------------------------------------------------------
    def build_model(self, model_cfg: dict, num_classes: int) -> torch.nn.Module:
        """The embedding network; its identity classifier is built for the softmax loss only."""
        return registry_model({**model_cfg, "classifier": self.cfg["loss"] == "softmax"}, self.dataset_cfg,
                              num_classes)

    def build_evaluator(self, dataset: IdentitySet):
        from cvtool.metrics.embedding import EmbeddingEvaluator

        return EmbeddingEvaluator(dataset.targets, dataset.pair_indices())

    def trivial_baseline(self, evaluator) -> Baseline | None:
        """Chance: a model whose embeddings carry no identity. Verification accuracy: the larger share of same or
        different pairs (0.5 on LFW's balanced folds); Recall@k, MAP@R: a random ordering of the others."""
        from cvtool.metrics.embedding import chance_metrics

        value = chance_metrics(evaluator).get(self.metric)
        return None if value is None else Baseline(value, "chance")

    # --- steps -------------------------------------------------------------------------------------------------
    def preprocess(self, batch, hardware: Hardware) -> dict:
        images, labels, index = batch
        return {"image": self.normalise(images, hardware),
                "label": torch.as_tensor(labels).to(hardware.device, non_blocking=True), "index": index}

    def batch_size(self, batch: dict) -> int:
        return batch["image"].shape[0]

    def training_step(self, model: torch.nn.Module, batch: dict) -> dict[str, torch.Tensor]:
        """task.loss on the batch's embeddings, and the batch's mean pairwise distance (collapse monitor)."""
        c, labels = self.cfg, batch["label"]
        if c["loss"] == "softmax":
            embeddings, logits = model(batch["image"], with_logits=True)
            embeddings, loss = embeddings.float(), F.cross_entropy(logits.float(), labels)
        else:
            embeddings = model(batch["image"]).float()
            loss = contrastive_loss(embeddings, labels, margin=c["contrastive_margin"]) \
                if c["loss"] == "contrastive" else \
                triplet_loss(embeddings, labels, margin=c["triplet_margin"], mining=c["mining"])
        distance = mean_pairwise_distance(embeddings.detach())
        self.collapse.update(float(distance), self.steps)
        self.steps += 1
        return {"loss": loss, "mean_distance": distance}

    def inference_step(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return model(batch["image"]).float()

    # --- results -----------------------------------------------------------------------------------------------
    def write_results(self, directory: Path, dataset: IdentitySet, embeddings: torch.Tensor, split: str) -> list[Path]:
        """embeddings.npy + index.csv (what `cvtool eval predictions=` reads) and the split's pairs.txt."""
        from cvtool.data.embedding_files import write_embeddings
        from cvtool.data.lfw_pairs import write_pairs

        known = all(t >= 0 for t in dataset.targets)
        names = [str(f) for f in dataset.files] if dataset.files else [f"{split}#{i}" for i in range(len(dataset))]
        identities = [dataset.identities[t] for t in dataset.targets] if known else None
        written = write_embeddings(directory, embeddings.numpy(), names, identities)
        if dataset.pairs:
            folds = max(p.fold for p in dataset.pairs) + 1
            written.append(write_pairs(directory / "pairs.txt", dataset.pairs, folds,
                                       len(dataset.pairs) // (2 * folds)))
        return written

    def open_source(self, files: list[Path], transform, class_names: list[str], source: Path) -> IdentitySet:
        """Plain image files; their identities are known when they sit in <source>/<identity>/ folders."""
        from cvtool.data.identity_sets import IdentityImage

        in_folders = source.is_dir() and all(f.parent.parent == source for f in files)
        if in_folders:
            found = scan_identities(source)
            dataset = identity_set(found, sorted(found), source=str(source), channels=self.dataset_cfg["channels"],
                                   skip_invalid=False, classes=class_names)
        else:
            found = {"": [IdentityImage("", i + 1, str(f)) for i, f in enumerate(files)]}
            dataset = identity_set(found, [""], source=str(source), channels=self.dataset_cfg["channels"],
                                   skip_invalid=False, classes=class_names)
            dataset.images.targets = [-1] * len(files)
        dataset.transform = self.sized(transform)
        return dataset

    def ground_truth(self, dataset: IdentitySet, count: int) -> None:
        """Identity folders have nothing to draw over an image (`visualize dataset` is for boxes, masks, joints)."""
        raise CvtoolError("identity folders have no boxes, masks or joints to draw", where="cvtool visualize dataset",
                          fix="check the files with `cvtool data check task=embedding`, or look at a trained "
                              "model's nearest neighbours: `cvtool visualize neighbours ckpt=...`")

    def draw_overlays(self, directory: Path, dataset: IdentitySet, embeddings: torch.Tensor, limit: int | None) -> int:
        """neighbours.png: the first `limit` images (at most task.overlay_queries) and their nearest others."""
        from cvtool.viz.embedding_plots import nearest_neighbours, neighbours_figure

        count = min(len(dataset) if limit is None else limit, self.cfg["overlay_queries"], len(dataset))
        k = min(self.cfg["neighbours"], len(dataset) - 1)
        if count == 0 or k < 1:
            return 0
        vectors = embeddings.numpy()
        queries = list(range(count))
        indices, distances = nearest_neighbours(vectors, queries, k)
        shown = sorted({*queries, *indices.ravel().tolist()})
        images = {i: dataset.images.load_image(i).permute(1, 2, 0).numpy() for i in shown}
        labels = dataset.targets if all(t >= 0 for t in dataset.targets) else [-1] * len(dataset)
        names = dataset.identities
        neighbours_figure(directory / "neighbours.png", [images.get(i) for i in range(len(dataset))], queries,
                          indices, distances, labels, names)
        return count

    # --- video -------------------------------------------------------------------------------------------------
    def frame_batch(self, frames: list[torch.Tensor], transform):
        """uint8 video frames as the batch `preprocess` takes (resized as the images are)."""
        sized = self.sized(transform)
        return (torch.stack([sized(frame) for frame in frames]), torch.full((len(frames),), -1),
                torch.arange(len(frames)))

    def frame_results(self, frames: list[torch.Tensor], batch, embeddings: torch.Tensor, classes: list[str]) -> list:
        """Per frame: its embedding, and the frame itself."""
        from torchvision.transforms.v2.functional import to_pil_image

        return [({"embedding": [round(float(v), 6) for v in vector]}, to_pil_image(frame))
                for frame, vector in zip(frames, embeddings)]


class CollapseMonitor:
    """Watches the batches' mean pairwise embedding distance (an exponential moving average) and warns when it falls
    below `fraction` of its highest value: the embeddings are collapsing to one point."""

    def __init__(self, fraction: float, momentum: float = 0.9):
        self.fraction, self.momentum = fraction, momentum
        self.average: float | None = None
        self.peak = 0.0
        self.collapsed = False
        self.warnings: list[dict] = []

    def update(self, distance: float, step: int | None = None) -> None:
        self.average = distance if self.average is None else \
            self.momentum * self.average + (1 - self.momentum) * distance
        self.peak = max(self.peak, self.average)
        collapsed = self.average < self.fraction * self.peak
        if collapsed and not self.collapsed:
            message = (f"embedding collapse: the mean pairwise distance of a batch fell to {self.average:.3g} "
                       f"(it was {self.peak:.3g}); try a smaller lr, another task.mining, or a larger margin")
            log.warning(message)
            self.warnings.append({"kind": "collapse", "step": step, "message": message})
        self.collapsed = collapsed
