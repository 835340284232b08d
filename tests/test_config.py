"""Config composition, the Hydra run/multirun contract and config errors."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cvtool.config import runner
from cvtool.config.locate import GROUPS, conf_dir, group_choices
from cvtool.errors import CvtoolError


def test_default_config_is_classification_on_shapes_with_cpu_friendly_model():
    cfg = runner.compose("train", [])
    assert cfg.task.name == "classification"
    assert cfg.dataset.name == "shapes" and cfg.model.name == "shapes_cnn"
    assert cfg.command == "train" and "hydra" not in cfg


def test_every_config_group_exists_and_has_choices():
    for group in GROUPS:
        assert (conf_dir() / group).is_dir(), group
    assert {"sgd", "adamw"} <= set(group_choices("optim"))
    assert {"step", "multistep", "cosine"} <= set(group_choices("sched"))
    assert {"cpu", "gpu", "ddp"} <= set(group_choices("hardware"))


def test_unknown_key_names_it_with_did_you_mean():
    with pytest.raises(CvtoolError) as err:
        runner.compose("train", ["trainer.epoch=3"])
    assert "unknown config key 'trainer.epoch'" in err.value.line()
    assert "did you mean 'trainer.epochs'" in err.value.line()


def test_unknown_group_choice_lists_valid_names():
    with pytest.raises(CvtoolError) as err:
        runner.compose("train", ["model=resnet_does_not_exist"])
    assert "unknown model 'resnet_does_not_exist'" in err.value.line()
    assert "shapes_cnn" in err.value.line()


def test_struct_mode_rejects_new_keys_without_plus_but_accepts_plus():
    with pytest.raises(CvtoolError):
        runner.compose("train", ["brand_new=1"])
    assert runner.compose("train", ["+brand_new=1"]).brand_new == 1


def test_experiment_is_a_global_diff():
    cfg = runner.compose("train", ["experiment=lenet5_digits"])
    assert cfg.model.name == "lenet5" and cfg.dataset.name == "digits" and cfg.optim._target_.endswith("AdamW")


def test_hardware_variants_extend_auto():
    cpu = runner.compose("train", ["hardware=cpu"]).hardware
    ddp = runner.compose("train", ["hardware=ddp"]).hardware
    assert cpu.device == "cpu" and cpu.amp == "off" and ddp.distributed and ddp.backend == "auto"


def test_hydra_run_creates_run_dir_snapshot_and_log(tmp_path):
    """Contract test of the hydra-core 1.3 wiring: run dir layout, .hydra snapshot, <command>.log."""
    seen = []

    def job(cfg, run_dir):
        import logging

        logging.getLogger("cvtool.test").info("hello from the job")
        seen.append((cfg.trainer.epochs, run_dir))
        return "ok"

    assert runner.run("train", [f"paths.runs={tmp_path}", "trainer.epochs=7"], job) == ["ok"]
    (epochs, run_dir), = seen
    assert epochs == 7 and run_dir.parent == tmp_path / "classification" / "train"
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.epochs == 7
    assert "trainer.epochs=7" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert "hello from the job" in (run_dir / "train.log").read_text()


def test_hydra_multirun_runs_one_job_per_sweep_value(tmp_path):
    seen = []
    runner.run("train", [f"paths.runs={tmp_path}", "trainer.epochs=1,2,3"],
               lambda cfg, run_dir: seen.append((cfg.trainer.epochs, run_dir)), multirun=True)
    assert sorted(e for e, _ in seen) == [1, 2, 3]
    assert {d.name for _, d in seen} == {"0", "1", "2"}
    assert all(d.parent.parent == tmp_path / "classification" / "multirun" for _, d in seen)


def test_job_errors_propagate_unchanged(tmp_path):
    def job(cfg, run_dir):
        raise CvtoolError("boom", where="here")

    with pytest.raises(CvtoolError, match="boom"):
        runner.run("train", [f"paths.runs={tmp_path}"], job)


def test_recipe_rows_size_runs_per_model_with_defaults_and_fallbacks():
    cfg = runner.compose("train", ["task=detection", "model=faster_rcnn"])
    assert (cfg.trainer.epochs, cfg.data.batch_size) == (3, 8)  # shapes_det's faster_rcnn row
    cfg = runner.compose("train", ["task=detection", "model=ssdlite"])
    assert (cfg.trainer.epochs, cfg.data.batch_size) == (12, 32)  # its default row
    cfg = runner.compose("train", ["task=detection"])
    assert (cfg.model.name, cfg.trainer.epochs, cfg.data.batch_size) == ("yolo", 14, 32)  # yolo row + default row
    cfg = runner.compose("train", ["task=segmentation", "dataset=voc_seg"])
    assert cfg.task.dice_weight == 0.0  # `${recipe:dice_weight,0.0}`: no row has it
    cfg = runner.compose("train", ["task=segmentation"])
    assert cfg.task.dice_weight == 1.0 and cfg.trainer.epochs == 10  # shapes' fcn8s row, the rest from default
    assert cfg.dataset.train_transforms[1].size == 96 and cfg.optim.lr == 1e-2  # fp32 on CPUs: 96 px crops
    cfg = runner.compose("train", ["task=segmentation", "model=segnet", "+dataset.recipe.default.dice_weight=0.5"])
    assert cfg.task.dice_weight == 0.5
    cfg = runner.compose("train", ["task=segmentation", "model=lraspp"])
    assert (cfg.optim.lr, cfg.trainer.epochs, cfg.task.dice_weight) == (3.0e-3, 11, 0.0)  # lraspp row + default row
    cfg = runner.compose("train", ["task=segmentation", "model=unet"])  # shapes' unet row: its own augmentation
    assert cfg.model.aux and (cfg.task.aux_weight, cfg.task.dice_weight) == (1.0, 1.0)
    assert [t.get("size") for t in cfg.dataset.train_transforms] == [None, 96]  # flip, 96 px crops (no rescaling)
    assert cfg.trainer.epochs == 7
    cfg = runner.compose("train", ["task=segmentation", "model=unet", "dataset=voc_seg"])
    assert not cfg.model.aux and cfg.task.aux_weight == 0.5 and len(cfg.dataset.train_transforms) > 1


def test_voc_and_coco_train_with_the_published_recipe_and_scale_lr_to_the_batch(monkeypatch):
    from cvtool.commands.components import scaled_lr

    cfg = runner.compose("train", ["task=detection", "model=faster_rcnn", "dataset=coco", "dataset.root=/c"])
    assert cfg.optim._target_ == "torch.optim.SGD" and not cfg.optim.nesterov
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.02, 0.9, 1e-4)
    assert (cfg.sched.name, list(cfg.sched.milestones), cfg.trainer.epochs) == ("multistep", [8, 11], 12)
    assert cfg.trainer.clip_grad_norm is None and cfg.data.aspect_ratio_grouping
    assert scaled_lr(cfg) == pytest.approx(0.02 * 2 / 16)  # 2 images on one process; 0.02 is for 16
    monkeypatch.setattr("cvtool.utils.distributed.world_size", lambda: 8)
    assert scaled_lr(cfg) == pytest.approx(0.02)
    cfg = runner.compose("train", ["task=detection", "model=retinanet", "dataset=voc", "dataset.root=/v"])
    assert (cfg.optim.lr, list(cfg.sched.milestones), cfg.trainer.epochs) == (0.01, [12, 16], 18)
    cfg = runner.compose("train", ["task=detection", "model=ssdlite", "dataset=coco", "dataset.root=/c"])
    assert (cfg.sched.name, cfg.optim.lr, cfg.trainer.lr_reference_batch) == ("cosine", 0.15, 192)
    cfg = runner.compose("train", ["task=segmentation", "model=fcn", "dataset=voc_seg", "dataset.root=/v"])
    assert (cfg.optim._target_, cfg.sched.name, cfg.optim.lr, cfg.trainer.lr_reference_batch) == (
        "torch.optim.SGD", "poly", 0.02, 32)
    # the command line still wins; the CPU-sized shapes data keeps AdamW without scaling
    cfg = runner.compose("train", ["task=detection", "dataset=coco", "dataset.root=/c", "optim=adamw", "sched=cosine"])
    assert cfg.optim._target_ == "torch.optim.AdamW" and cfg.sched.name == "cosine"
    cfg = runner.compose("train", ["task=detection"])
    assert cfg.optim._target_ == "torch.optim.AdamW" and scaled_lr(cfg) == cfg.optim.lr
    with pytest.raises(CvtoolError, match="'trainer.lr_reference_batch' must be an integer, got 'abc'"):
        runner.compose("train", ["task=detection", "trainer.lr_reference_batch=abc"])  # refused at composition
    cfg = runner.compose("train", ["task=detection", "trainer.lr_reference_batch=0"])
    with pytest.raises(CvtoolError, match="trainer.lr_reference_batch must be a positive number"):
        scaled_lr(cfg)


def test_a_value_of_the_wrong_type_is_refused_at_composition_naming_key_value_and_type():
    with pytest.raises(CvtoolError) as err:
        runner.compose("train", ["trainer.epochs=abc"])
    assert err.value.line() == ("config key 'trainer.epochs' must be an integer, got 'abc' (override) — "
                                "e.g. trainer.epochs=12 (its default)")
    for override, expected in [("optim.lr=fast", "a number"), ("plots=1", "true or false"),
                               ("data.batch_size=2.5", "an integer"), ("data.limit=some", "an integer"),
                               ("data.workers=many", "an integer"), ("visualize.noise=true", "a number")]:
        key = override.split("=")[0]
        with pytest.raises(CvtoolError, match=f"^config key '{key}' must be {expected}, got "):
            runner.compose("train", [override])
    # the default is a ${recipe:...} interpolation: its resolved value gives the type
    with pytest.raises(CvtoolError, match="'trainer.epochs' must be an integer, got 'x'"):
        runner.compose("train", ["task=detection", "trainer.epochs=x"])


def test_values_of_the_default_type_ints_for_floats_null_and_interpolations_are_accepted():
    cfg = runner.compose("train", ["optim.lr=1", "sched.warmup_epochs=2", "overlays=null", "data.workers=auto",
                                   "trainer.clip_grad_norm=5", "data.eval_batch_size=${data.batch_size}",
                                   "+trainer.new_key=abc", "model=resnet18", "model.weights=null"])
    assert (cfg.optim.lr, cfg.overlays, cfg.data.eval_batch_size) == (1, None, cfg.data.batch_size)
    assert runner.compose("train", ["task=detection", "trainer.epochs=3", "optim.lr=0.01"]).trainer.epochs == 3


def test_a_sweep_value_of_the_wrong_type_fails_its_job_naming_the_key(tmp_path):
    seen = []
    with pytest.raises(CvtoolError, match="'trainer.epochs' must be an integer, got 'two'"):
        runner.run("train", [f"paths.runs={tmp_path}", "trainer.epochs=1,two"],
                   lambda cfg, run_dir: seen.append(cfg.trainer.epochs), multirun=True)
    assert seen == [1]


def test_shapes_classification_augments_with_the_eight_symmetries_of_the_square():
    """The default recipe's flips + quarter turn give exactly the dihedral group's 8 images, pixel for pixel."""
    import torch

    from cvtool.commands import components as C

    augment = C.transforms(runner.compose("train", []), "train_transforms")
    image = torch.arange(3 * 8 * 8, dtype=torch.uint8).reshape(3, 8, 8)  # no symmetry of its own
    torch.manual_seed(0)
    seen = {augment(image).numpy().tobytes() for _ in range(400)}
    group = {torch.rot90(im, k, (1, 2)).numpy().tobytes() for im in (image, image.flip(2)) for k in range(4)}
    assert seen == group
