"""Fine-tuning: model.weights from another run's checkpoint, model.freeze, per-group lrs and layer-wise lr decay."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from conftest import read_json
from torchvision.ops import FrozenBatchNorm2d
from typer.testing import CliRunner

from cvtool.cli.app import app
from cvtool.commands import components as C
from cvtool.commands import evaluate, train
from cvtool.config import runner
from cvtool.engine.schedule import build_scheduler
from cvtool.errors import CvtoolError
from cvtool.models import create_model


def common(datasets_root: Path, tmp_path: Path) -> list[str]:
    """Run overrides of a tiny CPU run with its run dirs under tmp_path (any dataset)."""
    return [f"paths.datasets={datasets_root}", f"paths.runs={tmp_path / 'runs'}", "data.batch_size=30",
            "data.workers=0", "hardware=cpu", "logger=[]", "plots=false"]


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


def error_lines(result) -> list[str]:
    assert result.exit_code == 2 and "Traceback" not in result.output
    return [line for line in result.output.splitlines() if line.startswith("error:")]


def test_finetuning_a_checkpoint_on_another_class_set_remakes_only_the_head(tiny, tmp_path, datasets_root):
    # the default classifier on the tiny shapes (5 classes, read as grayscale), then the digits (10 other classes)
    train.main([*tiny, "trainer.epochs=1", "data.limit=60", "plots=false", "name=source", "dataset.channels=1",
                "dataset.mean=[0.5]", "dataset.std=[0.25]"])
    source = tmp_path / "runs" / "classification" / "train" / "source" / "checkpoints" / "best.pt"
    # no RandomAffine: on 2 busy cores its tiny two-thread bmm costs ~16 ms an image (0.4 ms on one thread)
    resize_only = "dataset.train_transforms=[{_target_:torchvision.transforms.v2.Resize,size:[32,32]}]"
    result = cli("train", *common(datasets_root, tmp_path), "name=tuned", "dataset=digits", "data.limit=300",
                 resize_only, "trainer.epochs=3", "sched.warmup_epochs=0", f"model.weights={source}",
                 "model.freeze=1", "optim.lr_scale={23:2}")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "classification" / "train" / "tuned"
    log = (run / "train.log").read_text()
    before = torch.load(source, weights_only=True)["model"]
    assert (f"weights {source}: loaded {len(before) - 2}/{len(before)} tensors; "
            "re-initialised (shape differs): 23.weight, 23.bias\n") in log
    assert "model.freeze=1: " in log and "2 BatchNorm layers frozen" in log
    # lr_scale from the command line: the head (weight and bias) trains at 2x the base lr of the others
    assert "parameter groups: 4 (lr 0.003: 4 tensors, lr 0.003: 8 tensors without weight decay, " \
           "lr 0.006: 1 tensors, lr 0.006: 1 tensors without weight decay)" in log
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    after = state["model"]
    frozen = [k for k in before if int(k.split(".")[0]) < 7 and "num_batches" not in k]  # stage 1: modules 0..6
    assert len(frozen) == 10 and all(torch.equal(after[k], before[k]) for k in frozen)
    assert not torch.equal(after["7.weight"], before["7.weight"])  # stage 2 trained
    assert after["23.weight"].shape == (10, 96) and state["class_names"] == [str(d) for d in range(10)]
    best = read_json(run / "metrics.json")["best"]
    assert best > 0.3  # chance: 0.1 (0.83 measured)
    # ckpt= rebuilds the frozen model (FrozenBatchNorm2d) from the stored config: the whole split, not chance
    metrics, = evaluate.main([f"ckpt={run / 'checkpoints' / 'best.pt'}", *common(datasets_root, tmp_path)])
    assert metrics["num_samples"] == 359 and metrics["top1"] > 0.3


def test_freezing_resnet18_stages_keeps_the_stem_and_layer1_fixed_in_train_mode():
    model = create_model("resnet18", num_classes=4, freeze=2)
    trainable = {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4", "fc"}
    assert isinstance(model.bn1, FrozenBatchNorm2d) and isinstance(model.layer1[1].bn2, FrozenBatchNorm2d)
    assert type(model.layer2[0].bn1) is torch.nn.BatchNorm2d
    stats = model.layer1[0].bn1.running_mean.clone(), model.layer2[0].bn1.running_mean.clone()
    model.train()(torch.randn(2, 3, 64, 64) + 3)
    assert torch.equal(model.layer1[0].bn1.running_mean, stats[0])  # frozen BatchNorm keeps its statistics
    assert not torch.equal(model.layer2[0].bn1.running_mean, stats[1])
    rebuilt = create_model("resnet18", num_classes=4, freeze=2)
    rebuilt.load_state_dict(model.state_dict())  # what ckpt= does: the same build takes the state strictly


def test_detector_stages_freeze_the_fpn_body_as_torchvision_trainable_layers_does():
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    model = create_model("faster_rcnn", num_classes=3, freeze=3)
    reference = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5 - 3,
                                    norm_layer=torch.nn.BatchNorm2d)
    trainable = {n for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in reference.named_parameters() if p.requires_grad}  # layer3, layer4, FPN
    assert all(p.requires_grad for p in model.rpn.parameters())
    body = model.backbone.body  # stem, layer1 (3 bottlenecks x 3 + downsample), layer2 (4 x 3 + 1)
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in body.modules()) == 1 + 10 + 13
    assert type(body.layer3[0].bn1) is torch.nn.BatchNorm2d
    whole = create_model("faster_rcnn", num_classes=3, freeze="backbone")
    assert not any(p.requires_grad for p in whole.backbone.parameters())  # FPN included
    assert all(p.requires_grad for p in whole.roi_heads.parameters())


def test_layer_decay_and_lr_scale_give_each_group_its_lr_through_warmup_and_cosine():
    cfg = runner.compose("train", ["optim.layer_decay=0.5", "optim.lr_scale={7:10}", "optim.lr=0.01",
                                   "trainer.decay_norm_and_bias=false"])
    model = create_model("shapes_cnn", num_classes=5)
    optimizer = C.optimizer(cfg, model)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in optimizer.param_groups for p in g["params"]}
    params = dict(model.named_parameters())
    # depth from the head: 23 -> 0, stage 14.. -> 1, stage 7.. -> 2, stage 0.. -> 3; module 7 also x10
    expected = {"0.weight": 0.01 * 0.5 ** 3, "1.bias": 0.01 * 0.5 ** 3, "7.weight": 0.01 * 0.5 ** 2 * 10,
                "8.weight": 0.01 * 0.5 ** 2, "17.weight": 0.01 * 0.5, "23.weight": 0.01, "23.bias": 0.01}
    for name, lr in expected.items():
        assert lr_of[id(params[name])][0] == pytest.approx(lr), name
    assert lr_of[id(params["23.bias"])][1] == 0.0 and lr_of[id(params["23.weight"])][1] == cfg.optim.weight_decay
    assert optimizer.param_groups[0]["lr"] == 0.01  # the head's: the lr the logs show
    scheduler = build_scheduler(optimizer, C.plain(cfg.sched), steps_per_epoch=10, epochs=4)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    factor = scheduler.lr_lambdas[0](7)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([b * factor for b in scheduler.base_lrs])


def test_lr_options_that_match_nothing_or_do_not_apply_are_refused():
    model = create_model("shapes_cnn", num_classes=5)
    cfg = runner.compose("train", ["optim.lr_scale={features.*:0.1}"])
    with pytest.raises(CvtoolError, match=r"optim.lr_scale pattern 'features.\*' matches no parameter"):
        C.optimizer(cfg, model)
    cfg = runner.compose("train", ["task=segmentation", "optim.layer_decay=0.7"])
    with pytest.raises(CvtoolError, match="optim.layer_decay .*: classification only, not segmentation"):
        C.optimizer(cfg, model)


def test_a_freeze_pattern_that_matches_nothing_is_one_line_exit_2(tiny):
    assert error_lines(cli("train", *tiny, "model.freeze=[layer1*]")) == [
        "error: model.freeze pattern 'layer1*' matches no parameter of the model (model.freeze) — module names "
        "look like 0, 1, 2, 3, 4, 5, 6, 7, ... (`cvtool inspect` lists them)"]


def test_weights_whose_shapes_match_nothing_are_one_line_exit_2(tiny, tmp_path):
    path = tmp_path / "lenet.pt"
    torch.save(create_model("lenet5", num_classes=5, in_channels=3).state_dict(), path)
    assert error_lines(cli("train", *tiny, f"model.weights={path}")) == [
        f"error: weights file matches only 0 of the model's 38 tensors (0 have other shapes, 10 are not in the "
        f"model) ({path}) — it was saved from another architecture; pick the matching model= or another file"]


def test_weights_report_names_what_was_loaded_remade_and_skipped(tmp_path, caplog):
    source = create_model("resnet18", num_classes=10)
    state = source.state_dict() | {"extra.weight": torch.zeros(2)}
    torch.save(state, tmp_path / "r18.pt")
    with caplog.at_level(logging.INFO, logger="cvtool"):
        model = create_model("resnet18", num_classes=3, weights=str(tmp_path / "r18.pt"))
    assert f"weights {tmp_path / 'r18.pt'}: loaded 120/122 tensors; re-initialised (shape differs): fc.weight, " \
           "fc.bias; skipped (not in model): extra.weight" in caplog.text
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
