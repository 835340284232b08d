"""Build the pieces every command needs from the composed config (the only Hydra-aware builders)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cvtool.config.errors import missing_value
from cvtool.data.samplers import ResumableSampler, ShardSampler, class_balanced_weights, item_labels
from cvtool.data.transforms import MixedBatches, fill_num_classes
from cvtool.engine.hardware import Hardware, init_distributed, resolve_hardware
from cvtool.engine.param_groups import parameter_groups
from cvtool.errors import CvtoolError
from cvtool.tasks import build_task
from cvtool.utils import distributed as dist
from cvtool.utils.seeding import seed_everything

from . import folder_defaults

log = logging.getLogger("cvtool")


def plain(node) -> dict | list:
    """A resolved plain-Python copy of a config node (what the layers below Hydra receive)."""
    from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue

    try:
        return OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    except (MissingMandatoryValue, InterpolationToMissingValueError) as exc:
        raise missing_value(exc) from exc


def instantiate(spec, key: str):
    """hydra.utils.instantiate, with a bad `_target_` or argument reported as a user error naming the key."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate as hydra_instantiate

    try:
        return hydra_instantiate(spec)
    except InstantiationException as exc:
        reason = str(exc).splitlines()[0].split(", set env var HYDRA_FULL_ERROR")[0]
        raise CvtoolError(f"cannot build {key}: {reason}", where=key,
                          fix="check its _target_ and arguments (cvtool config show)") from exc


def setup(cfg: DictConfig) -> Hardware:
    """Join DDP if asked, resolve the device/precision, seed everything (per rank, for varied augmentation)."""
    hw = plain(cfg.hardware)
    init_distributed(hw)
    hardware = resolve_hardware(hw, amp_on_cpu="model" not in cfg or cfg.model.get("amp_on_cpu", True))
    seed_everything(cfg.seed + dist.rank(), cfg.deterministic)
    return hardware


def task_from(cfg: DictConfig):
    """The task adapter, after dataset keys left at `auto` are measured from the data (dataset=imagefolder)."""
    folder_defaults.resolve(cfg)
    return build_task(cfg.task.name, plain(cfg.task), plain(cfg.dataset), plain(cfg.model) if "model" in cfg else None)


def transforms(cfg: DictConfig, which: str) -> torch.nn.Module | None:
    """Instantiate a list of `_target_` transform specs into a transforms.v2.Compose (None when empty)."""
    from torchvision.transforms import v2

    specs = cfg.dataset[which] or []
    items = [instantiate(spec, f"dataset.{which}[{i}]") for i, spec in enumerate(specs)]
    return v2.Compose(items) if items else None


def num_workers(cfg: DictConfig, dataset) -> int:
    """data.workers, where auto = 0 for data held in memory (workers would only compete for cores)."""
    if cfg.data.workers != "auto":
        return int(cfg.data.workers)
    in_memory = getattr(getattr(dataset, "dataset", dataset), "in_memory_data", False)
    return 0 if in_memory else min(4, os.cpu_count() or 1)


def loader(dataset, cfg: DictConfig, hardware: Hardware, *, train: bool) -> torch.utils.data.DataLoader:
    """Training: resumable per-epoch-seeded shuffling (DistributedSampler) or class-balanced draws
    (data.sampler), then dataset.batch_transforms (MixUp/CutMix); evaluation: unpadded shards, batches as read."""
    collate = getattr(dataset, "collate", None)
    if train:
        batch_size = cfg.data.batch_size
        groups = dataset.aspect_groups() if cfg.data.aspect_ratio_grouping and hasattr(dataset, "aspect_groups") \
            else None
        sampler = ResumableSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank(), shuffle=True,
                                   seed=cfg.seed, groups=groups, batch_size=batch_size,
                                   weights=sampling_weights(dataset, cfg), identities=identity_sampling(dataset, cfg))
        collate = mixed_collate(dataset, cfg, collate)
    else:
        sampler = ShardSampler(dataset, num_replicas=dist.world_size(), rank=dist.rank())
        batch_size = cfg.data.eval_batch_size
    workers = num_workers(cfg, dataset)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate,
        num_workers=workers, pin_memory=hardware.pin_memory, generator=getattr(sampler, "generator", None),
        drop_last=train and cfg.data.drop_last and len(sampler) >= batch_size,
        persistent_workers=False, prefetch_factor=4 if workers else None)


def classification_only(cfg: DictConfig, key: str, what: str,
                        fix: str = "segmentation balances classes with task.class_weights=auto") -> None:
    """Refuse a training option that is for classifiers only under another task."""
    if cfg.task.name != "classification":
        raise CvtoolError(f"{key} {what}: classification only, not {cfg.task.name}", where=key,
                          fix=f"drop {key} ({fix})")


def sampling_weights(dataset, cfg: DictConfig) -> list[float] | None:
    """data.sampler=balanced: per-item weights 1 / (items of its class); null: uniform shuffling (None)."""
    if cfg.data.sampler in (None, "identities"):
        return None
    if cfg.data.sampler != "balanced":
        raise CvtoolError(f"unknown data.sampler {cfg.data.sampler!r}", where="data.sampler",
                          fix="data.sampler=balanced or identities (P×K, task=embedding), or null (every item "
                              "once per epoch)")
    classification_only(cfg, "data.sampler=balanced", "draws images by their class label")
    return class_balanced_weights(item_labels(dataset))


def identity_sampling(dataset, cfg: DictConfig) -> tuple[list[int], int, int] | None:
    """data.sampler=identities: (item labels, P = batch_size / K, K = data.images_per_identity) for P×K batches;
    identities with fewer than K images are skipped with a count (an error when fewer than P remain)."""
    if cfg.data.sampler != "identities":
        return None
    if cfg.task.name != "embedding":
        raise CvtoolError(f"data.sampler=identities draws P identities x K images: task=embedding only, not "
                          f"{cfg.task.name}", where="data.sampler", fix="drop data.sampler=identities")
    from cvtool.data.identity_sets import trainable_identities

    k = cfg.data.images_per_identity
    if isinstance(k, bool) or not isinstance(k, int) or k < 2 or cfg.data.batch_size % k:
        raise CvtoolError(f"data.images_per_identity={k!r} must be an integer >= 2 dividing data.batch_size="
                          f"{cfg.data.batch_size}", where="data.images_per_identity",
                          fix="e.g. data.batch_size=64 data.images_per_identity=4 (16 identities x 4 images)")
    p, labels = cfg.data.batch_size // k, list(item_labels(dataset))
    trainable_identities(labels, k, p, where=str(dataset.source))
    return labels, p, k


def mixed_collate(dataset, cfg: DictConfig, collate):
    """`collate` followed by dataset.batch_transforms (MixUp/CutMix get the dataset's class count), or `collate`
    itself when there are none."""
    transform = transforms(cfg, "batch_transforms")
    if transform is None:
        return collate
    classification_only(cfg, "dataset.batch_transforms", "mix images and their labels")
    fill_num_classes(transform, len(dataset.classes))
    return MixedBatches(collate or torch.utils.data.default_collate, transform)


def limited(dataset, limit: int | None, seed: int):
    """A seeded random subset of `limit` items (keeps class names and description), or the dataset itself."""
    if not limit or limit >= len(dataset):
        return dataset
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].tolist()
    if hasattr(dataset, "subset"):  # datasets that know their own ground truth (detection) subset themselves
        return dataset.subset(sorted(order))
    subset = torch.utils.data.Subset(dataset, order)
    subset.classes, subset.source = dataset.classes, f"{dataset.source}, subset of {limit}"
    subset.in_memory_data = getattr(dataset, "in_memory_data", False)
    return subset


def train_val_sets(cfg: DictConfig, task) -> tuple:
    """The training split (with its augmentation) and the validation split, both cut to `data.limit` (N/2 val)."""
    common = {"skip_invalid": cfg.data.skip_invalid, "seed": cfg.seed}
    train_set = task.open_split(cfg.dataset.train_split, transforms(cfg, "train_transforms"), **common, train=True)
    val_set = task.open_split(cfg.dataset.split, transforms(cfg, "eval_transforms"), **common,
                              classes=train_set.classes)
    return (limited(train_set, cfg.data.limit, cfg.seed),
            limited(val_set, cfg.data.limit and max(1, cfg.data.limit // 2), cfg.seed))


def optimizer(cfg: DictConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """`optim` is a partial `_target_` (less cvtool's own lr_scale and layer_decay keys) over the parameter groups
    of engine.param_groups: no weight decay on norm layers and biases unless asked, lr multipliers per group."""
    spec = plain(cfg.optim)
    lr_scale, layer_decay = spec.pop("lr_scale"), spec.pop("layer_decay")
    if layer_decay is not None:
        classification_only(cfg, "optim.layer_decay", "decays the lr from the head down",
                            fix="set per-module lrs with optim.lr_scale={PATTERN:MULTIPLIER}")
    lr = scaled_lr(cfg)
    groups = parameter_groups(model, lr, decay_norm_and_bias=cfg.trainer.decay_norm_and_bias, lr_scale=lr_scale,
                              layer_decay=layer_decay)
    return instantiate(spec, "optim")(groups, lr=lr)


def scaled_lr(cfg: DictConfig) -> float:
    """`optim.lr`, scaled linearly from `trainer.lr_reference_batch` images to the run's effective batch."""
    lr, reference = float(cfg.optim.lr), cfg.trainer.lr_reference_batch
    if reference is None:
        return lr
    if isinstance(reference, bool) or not isinstance(reference, int) or reference < 1:
        raise CvtoolError(f"trainer.lr_reference_batch must be a positive number of images, got {reference!r}",
                          where="trainer.lr_reference_batch", fix="e.g. trainer.lr_reference_batch=16, or null")
    batch = cfg.data.batch_size * cfg.trainer.grad_accum * dist.world_size()
    log.info("lr %g is for %d images; %g for this run's effective batch of %d (linear scaling)",
             lr, reference, lr * batch / reference, batch)
    return lr * batch / reference


def to_device(model: torch.nn.Module, hardware: Hardware) -> torch.nn.Module:
    """The model on its device, channels_last where that is faster: not for GroupNorm models on a CPU, whose
    NHWC GroupNorm backward is ~10x slower (measured: ResNet-50-FPN with GN trains 8 % faster in NCHW)."""
    model = model.to(hardware.device)
    group_norm_on_cpu = hardware.device.type == "cpu" and any(isinstance(m, torch.nn.GroupNorm)
                                                              for m in model.modules())
    if hardware.channels_last and not group_norm_on_cpu:
        model = model.to(memory_format=torch.channels_last)
    return model


def run_dir_path(run_dir: Path | None) -> Path | None:
    """Rank 0's run dir (None elsewhere), with its checkpoints/ and plots/ sub-dirs."""
    if run_dir is None or not dist.is_main():
        return None
    for sub in ("checkpoints", "plots"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    return run_dir
