"""The `cvtool` command line as a user runs it: fast help, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

CVTOOL = [sys.executable, "-m", "cvtool"]


def cvtool(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([*CVTOOL, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_cli_module_does_not_import_torch():
    code = "import sys, cvtool.cli.app; print('torch' in sys.modules, 'hydra' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


@pytest.mark.parametrize("command", ["train", "eval", "predict", "export", "inspect"])
def test_command_help_lists_config_groups_and_choices(command):
    result = cvtool(command, "--help")
    assert result.returncode == 0
    for expected in ("task: classification", "hardware: auto, cpu, ddp, gpu", "optim: adamw, sgd, sgd_published",
                     "sched: cosine, multistep, poly, published, step"):
        assert expected in result.stdout


def test_unknown_key_is_one_line_exit_2_without_traceback():
    result = cvtool("train", "trainer.epoch=3")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: unknown config key 'trainer.epoch' (override) — did you mean "
                                     "'trainer.epochs' or 'trainer.ema'? (+trainer.epoch=VALUE would add it as a "
                                     "new key)")
    assert "Traceback" not in result.stderr


def test_debug_flag_shows_the_traceback():
    result = cvtool("--debug", "config", "show", "train", "model=nope")
    assert result.returncode != 0 and "Traceback" in result.stderr and "unknown model 'nope'" in result.stderr


def test_missing_checkpoint_names_the_file(tmp_path):
    result = cvtool("eval", f"ckpt={tmp_path / 'missing.pt'}", f"paths.runs={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.startswith("error: checkpoint file not found (") and "missing.pt" in result.stderr


def test_missing_dataset_root_names_it(tmp_path):
    result = cvtool("train", "dataset=mnist", f"dataset.root={tmp_path / 'nowhere'}", f"paths.runs={tmp_path}")
    assert result.returncode == 2 and "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_export_without_a_checkpoint_says_what_it_needs_with_exit_2():
    result = cvtool("export", "model=resnet18")
    assert result.returncode == 2 and "needs a trained model" in result.stderr and "ckpt=" in result.stderr


def test_models_lists_registry_with_parameter_counts():
    result = cvtool("models", "resnet1*")
    assert result.returncode == 0
    assert "resnet18" in result.stdout and "11.69M" in result.stdout and "resnet101" in result.stdout
    assert cvtool("models", "no_such_model*").returncode == 2


def test_config_show_prints_composed_yaml():
    result = cvtool("config", "show", "train", "model=lenet5", "dataset=digits")
    assert result.returncode == 0 and "name: lenet5" in result.stdout and "kind: digits" in result.stdout


def test_required_dataset_root_is_named(tmp_path):
    result = cvtool("train", "dataset=imagefolder", f"paths.runs={tmp_path}")
    assert result.returncode == 2
    expected = "error: config key 'dataset.root' needs a value (dataset.root) — pass dataset.root=..."
    assert result.stderr.strip() == expected


def test_bad_transform_target_names_the_config_key(tmp_path):
    result = cvtool("train", "dataset.train_transforms=[{_target_: torchvision.transforms.v2.Nope}]",
                    f"paths.runs={tmp_path}", f"paths.datasets={tmp_path}", "dataset.synth.num_train=10",
                    "dataset.synth.num_val=5")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot build dataset.train_transforms[0]" in result.stderr and "v2.Nope" in result.stderr


def test_a_value_of_the_wrong_type_is_one_line_naming_the_key(tmp_path):
    result = cvtool("train", "trainer.epochs=abc", f"paths.runs={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: config key 'trainer.epochs' must be an integer, got 'abc' (override) — "
                                     "e.g. trainer.epochs=12 (its default)")


@pytest.mark.parametrize("command", ["train", "inspect"])
def test_a_model_of_another_task_is_refused_listing_the_tasks_models(command, tmp_path):
    result = cvtool(command, "task=detection", "model=resnet18", f"paths.runs={tmp_path}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("error: model resnet18 is a classification model, not a detection one "
                                    "(task=detection model=resnet18) — detection models: ")
    assert "yolo" in result.stderr and "(cvtool models --task detection)" in result.stderr


def test_a_corrupt_image_read_in_a_dataloader_worker_is_the_same_one_line(tmp_path):
    import numpy as np
    from PIL import Image

    for split in ("train", "val"):
        for name in ("cats", "dogs"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((16, 16, 3), 40 * i, np.uint8)).save(tmp_path / split / name / f"{i}.png")
    bad = tmp_path / "train" / "cats" / "bad.png"
    bad.write_bytes(b"not a PNG" * 10)
    result = cvtool("train", "dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.image_size=16",
                    "dataset.channels=3", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]",
                    "model=shapes_cnn", "data.workers=1", "data.batch_size=7", "data.drop_last=false",
                    "trainer.epochs=1", "hardware=cpu", f"paths.runs={tmp_path / 'runs'}")
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: image file is corrupt or unreadable ({bad}) — delete or replace it, "
                                     "or pass data.skip_invalid=true to skip bad files")


def test_a_file_that_is_not_a_torch_checkpoint_is_named_plainly(tmp_path):
    import torch

    legacy = tmp_path / "legacy.pt"
    torch.save({"model": {}}, legacy, _use_new_zipfile_serialization=False)
    result = cvtool("eval", f"ckpt={legacy}", f"paths.runs={tmp_path}")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith(f"error: not a cvtool/PyTorch checkpoint: the file is not the zip archive "
                                    f"torch.save writes ({legacy}) — ")
    assert "mmap" not in result.stderr
