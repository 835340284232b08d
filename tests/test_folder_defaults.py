"""dataset=imagefolder: image size, colour, flips and mean/std measured from the folder when left at `auto`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import only_run_dir
from PIL import Image
from torchvision.transforms import v2

from cvtool.commands import components as C
from cvtool.commands import data, evaluate, train
from cvtool.config import runner
from cvtool.data.classification_sets import open_classification_set
from cvtool.data.folder_profile import read_headers, sample_files


def write_folder(root: Path, size: tuple[int, int], mode: str = "L", per_class: int = 6, seed: int = 0) -> Path:
    """root/train|val/<a|b>/*.png of random pixels, all of one size and mode."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + (() if mode == "L" else (3,))
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"{i}.png")
    return root


def resolved(root: Path, *overrides: str):
    cfg = runner.compose("train", ["dataset=imagefolder", f"dataset.root={root}", *overrides])
    C.task_from(cfg)
    return cfg


def test_tiny_grayscale_images_keep_their_size_with_no_flip_and_measured_mean_std(tmp_path):
    root = write_folder(tmp_path / "tiny", (8, 8))
    cfg = resolved(root, "model=shapes_cnn")  # smallest input 7 px, no native size
    ds = cfg.dataset
    assert (ds.image_size, ds.channels, ds.hflip) == (8, 1, False)
    pixels = np.concatenate([np.asarray(Image.open(p)) for p in sorted(root.glob("train/*/*.png"))]) / 255
    assert ds.mean == pytest.approx([pixels.mean()], abs=1e-4) and ds.std == pytest.approx([pixels.std()], abs=1e-4)
    crop, flip = C.transforms(cfg, "train_transforms").transforms
    assert tuple(crop.size) == (8, 8) and tuple(crop.scale) == (0.6, 1.0) and isinstance(flip, v2.Identity)
    image, _ = C.task_from(cfg).open_split("train", None, skip_invalid=False, seed=0)[0]
    assert image.shape == (1, 8, 8)  # decoded as grayscale


def test_lenet5_gets_its_native_32px_input(tmp_path):
    cfg = resolved(write_folder(tmp_path / "tiny", (8, 8)), "model=lenet5")
    assert cfg.dataset.image_size == 32 and cfg.dataset.channels == 1 and cfg.dataset.hflip is False


def test_large_colour_photos_get_224px_and_flips(tmp_path):
    cfg = resolved(write_folder(tmp_path / "large", (300, 260), mode="RGB", per_class=2), "model=resnet18")
    assert (cfg.dataset.image_size, cfg.dataset.channels, cfg.dataset.hflip) == (224, 3, True)
    assert len(cfg.dataset.mean) == len(cfg.dataset.std) == 3
    assert isinstance(C.transforms(cfg, "train_transforms").transforms[1], v2.RandomHorizontalFlip)


def test_values_the_user_sets_win_over_the_measured_ones(tmp_path):
    cfg = resolved(write_folder(tmp_path / "tiny", (8, 8)), "model=lenet5", "dataset.image_size=48",
                   "dataset.hflip=true", "dataset.channels=3", "dataset.mean=[0.5,0.5,0.5]", "dataset.crop_scale=[1,1]")
    ds = cfg.dataset
    assert (ds.image_size, ds.hflip, ds.channels, list(ds.mean)) == (48, True, 3, [0.5, 0.5, 0.5])
    assert len(ds.std) == 3  # still measured, over 3 channels
    crop, flip = C.transforms(cfg, "train_transforms").transforms
    assert tuple(crop.size) == (48, 48) and tuple(crop.scale) == (1, 1) and isinstance(flip, v2.RandomHorizontalFlip)


def test_sizes_come_from_headers_of_a_seeded_sample_without_decoding(tmp_path, monkeypatch):
    root = write_folder(tmp_path / "tiny", (8, 6), per_class=20)
    files = open_classification_set("imagefolder", root, "train").files
    sample = sample_files(files, 10, seed=3)
    assert sample == sample_files(files, 10, seed=3) != sample_files(files, 10, seed=4) and len(sample) == 10
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded pixels"))
    profile = read_headers(sample)
    assert profile.median_size == (8, 6) and profile.median_side == 6 and profile.grayscale


def test_train_logs_the_choice_and_the_checkpoint_keeps_it_for_eval_on_other_data(tmp_path):
    root = write_folder(tmp_path / "tiny", (8, 8))
    runs = tmp_path / "runs"
    common = [f"paths.runs={runs}", "hardware=cpu", "plots=false", "data.workers=0"]
    train.main(["model=lenet5", "dataset=imagefolder", f"dataset.root={root}", "trainer.epochs=1",
                "data.batch_size=4", "logger=[]", *common])
    run = only_run_dir(runs / "classification" / "train")
    assert ("imagefolder: 32x32 px (model's native input; median image 8x8), grayscale, crop scale 0.6-1, no flip, "
            "mean/std from 12 images") in (run / "train.log").read_text()
    config = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["config"]
    assert "image_size: 32" in config and "channels: 1" in config
    # evaluated on a folder of larger colour images, the model still gets what it was trained with
    other = write_folder(tmp_path / "other", (16, 16), mode="RGB", seed=1)
    metrics, = evaluate.main([f"ckpt={run / 'checkpoints' / 'last.pt'}", f"dataset.root={other}", *common])
    assert metrics["num_samples"] == 12
    assert "imagefolder:" not in (only_run_dir(runs / "classification" / "eval") / "eval.log").read_text()


def test_data_check_prints_size_colour_statistics_and_suggested_mean_std(tmp_path, capsys):
    root = write_folder(tmp_path / "tiny", (8, 6))
    data.check(["dataset=imagefolder", f"dataset.root={root}", "model=lenet5"])
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "images: 24 files, width 8/8/8, height 6/6/6 px (min/median/max); modes L x24: grayscale" in out
    assert "suggested normalisation (pixels in [0, 1], 12 sampled train images): dataset.mean=[0." in out
    assert "imagefolder: 32x32 px (model's native input; median image 8x6), grayscale" in out
