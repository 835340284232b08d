"""`dataset=imagefolder` keys left at `auto` become values measured from the folder, written into the config before
anything reads it (so checkpoints store what the model was trained with)."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from cvtool.config.errors import missing_value
from cvtool.data.classification_sets import open_classification_set
from cvtool.data.folder_profile import (
    FolderSettings,
    derive_image_size,
    pixel_stats,
    read_headers,
    sample_files,
)

log = logging.getLogger("cvtool.data")

AUTO = "auto"
AUTO_KEYS = ("image_size", "channels", "mean", "std", "hflip")


def is_auto(value) -> bool:
    return isinstance(value, str) and value == AUTO


def auto_keys(cfg: DictConfig) -> list[str]:
    return [key for key in AUTO_KEYS if key in cfg.dataset and is_auto(cfg.dataset[key])]


def adopt_trained(cfg: DictConfig, trained: DictConfig) -> None:
    """`auto` keys take the values a checkpoint's model was trained with, not values measured on new data."""
    for key in auto_keys(cfg):
        if key in trained.dataset and not is_auto(trained.dataset[key]):
            cfg.dataset[key] = trained.dataset[key]


def training_files(cfg: DictConfig) -> list[str]:
    ds = cfg.dataset
    try:
        root = ds.root
    except Exception as exc:  # noqa: BLE001 - a `???` root becomes the usual one-line error
        raise (missing_value(exc) or exc) from exc
    return open_classification_set("imagefolder", root, ds.train_split, val_fraction=ds.val_fraction,
                                   seed=cfg.seed).files


def resolve(cfg: DictConfig) -> FolderSettings | None:
    """Measure and set the `auto` keys of an imagefolder dataset (a no-op otherwise); log the one-line report."""
    if cfg.dataset.get("kind") != "imagefolder" or not auto_keys(cfg):
        return None
    from cvtool.models import model_info

    ds, derive = cfg.dataset, cfg.dataset.derive
    sample = sample_files(training_files(cfg), derive.sample, cfg.seed)
    profile = read_headers(sample)
    if is_auto(ds.image_size):
        model = cfg.get("model")
        ds.image_size, size_reason = derive_image_size(
            profile, native_size=model and model.get("native_size"),
            min_size=model_info(model.name).min_size if model else 1,
            max_native=derive.max_native, large_size=derive.large_size)
    else:
        size_reason = "dataset.image_size"
    if is_auto(ds.channels):
        ds.channels = 1 if profile.grayscale else 3
    if is_auto(ds.hflip):
        ds.hflip = profile.median_side > derive.small_side
    stats_images = 0
    if is_auto(ds.mean) or is_auto(ds.std):
        mean, std, stats_images = pixel_stats(sample, ds.channels)
        ds.mean = mean if is_auto(ds.mean) else ds.mean
        ds.std = std if is_auto(ds.std) else ds.std
    settings = FolderSettings(ds.image_size, size_reason, ds.channels, ds.hflip, tuple(ds.crop_scale),
                              list(ds.mean), list(ds.std), stats_images, profile.median_size)
    log.info(settings.report())
    return settings
