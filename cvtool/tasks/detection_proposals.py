"""External region proposals for the detection adapter (fast_rcnn, rcnn): attached to a split's items from a method or
a file, handed to the model with each batch; and R-CNN's post-training fit of SVMs and box regressors."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from cvtool.data import proposal_sources as sources
from cvtool.data.roots import prepared_root
from cvtool.engine.hooks import Hook
from cvtool.errors import CvtoolError

log = logging.getLogger("cvtool.detection")


def _model(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def proposals_of(model: torch.nn.Module, batch: dict) -> dict:
    """{"proposals": per-image (n, 4) tensors} for a model that takes external proposals, else {}."""
    if not getattr(_model(model), "uses_proposals", False):
        return {}
    found = [t.get("proposals") for t in batch["targets"]]
    if any(p is None for p in found):
        raise CvtoolError("this model takes region proposals, but the images came without them",
                          where="model.proposals",
                          fix="set model.proposals to a method (selective_search, edge, kmeans) or a proposal file")
    return {"proposals": [p.as_subclass(torch.Tensor) for p in found]}


def proposal_options(task) -> dict:
    return dict(task.cfg["proposals"])


def cache_dir(task, root: Path | None) -> Path:
    """<dataset root>/proposals (COCO data: beside the annotation file)."""
    if root is not None:
        return Path(root) / "proposals"
    return Path(task.dataset_cfg["ann_file"]).parent / "proposals"


def training_items(task) -> list:
    """The training split's items (annotations only), for the k-means set of "R-CNN minus R"."""
    if task.train_boxes is not None:
        return task.train_boxes.items
    from cvtool.data.detection_sets import open_detection_set

    ds = task.dataset_cfg
    dataset = open_detection_set(ds["kind"], root=prepared_root(ds), split=ds["train_split"], classes=ds.get("classes"),
                                 ann_file=ds.get("train_ann_file"), image_dir=ds.get("train_image_dir"), train=True,
                                 with_masks=False, skip_invalid=False, problems=None)
    return dataset.items


def split_proposals(task, items: list, split: str, root: Path | None):
    """The split's ProposalSet from task.proposal_spec (a method, cached, or a file)."""
    spec, options = task.proposal_spec, proposal_options(task)
    if sources.is_method(spec):
        train = training_items(task) if spec == "kmeans" else None
        return sources.cached(spec, items, split=split, cache_dir=cache_dir(task, root), options=options,
                              train_items=train, jobs=int(options["jobs"]))
    return sources.from_file(spec, items, split)


def attach_split_proposals(task, dataset, split: str, root: Path | None) -> None:
    found = split_proposals(task, dataset.items, split, root)
    sources.attach(dataset.items, found, task.cfg["proposals"]["max_proposals"])
    log.info("proposals for %s: %s, %.0f per image", split, found.source,
             sum(len(b) for b in found.boxes) / max(1, len(found.boxes)))


def attach_source_proposals(task, dataset) -> None:
    """Proposals for plain images (predict source=...): computed by the method, or looked up by file stem in a file."""
    spec = task.proposal_spec
    options = proposal_options(task)
    if sources.is_method(spec):
        train = training_items(task) if spec == "kmeans" else None
        found = sources.compute(spec, dataset.items, options=options, train_items=train, jobs=int(options["jobs"]))
    else:
        found = sources.from_file(spec, dataset.items, "predict")
    sources.attach(dataset.items, found, options["max_proposals"])


class ClassifierFitHook(Hook):
    """After the last epoch, before validation: R-CNN's linear SVMs (hard-negative mining) and ridge box regressors,
    fitted on CNN features of the training set's regions computed once (`model.fit_classifiers`)."""

    def __init__(self, task, loader, hardware):
        self.task, self.loader, self.hardware = task, loader, hardware

    def after_epoch(self, trainer) -> None:
        if trainer.epoch < trainer.epochs:
            return
        from cvtool.tasks.detection import label_offset

        model = _model(trainer.model)
        offset = label_offset(model)

        def batches():
            for raw in self.loader:
                batch = self.task.preprocess(raw, self.hardware)
                targets = [{**t, "labels": t["labels"] + offset} for t in batch["targets"]]
                yield batch["images"], targets, proposals_of(model, batch)["proposals"]

        started = time.perf_counter()
        was_training = model.training
        model.eval()
        model.fit_classifiers(batches())
        model.train(was_training)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for buffer in model.buffers():  # every rank keeps rank 0's classifiers
                torch.distributed.broadcast(buffer, 0)
        log.info("R-CNN classifiers fitted in %.1f s", time.perf_counter() - started)


class _WithProposals(torch.nn.Module):
    """A proposal-taking detector with one image's proposals bound: `forward(images)` as any detector (attributions
    run it on perturbed copies of that image)."""

    def __init__(self, model: torch.nn.Module, proposals: torch.Tensor):
        super().__init__()
        self.model, self.proposals = model, proposals
        self.label_offset = getattr(model, "label_offset", 0)

    def forward(self, images, targets=None):
        device = images[0].device
        return self.model(images, targets, proposals=[self.proposals.to(device)] * len(images))


def with_proposals(model: torch.nn.Module, target: dict) -> torch.nn.Module:
    """`model`, bound to the image's proposals (target["proposals"]) if it takes external ones."""
    if not getattr(_model(model), "uses_proposals", False):
        return model
    return _WithProposals(model, target["proposals"].as_subclass(torch.Tensor))
