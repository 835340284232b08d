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
