"""Engine pieces: LR schedules, gradient accumulation, atomic writes, checkpoints, the accuracy evaluator."""

from __future__ import annotations

import math
import os

import pytest
import torch

from cvtool.engine.checkpoint import load_checkpoint, save_checkpoint
from cvtool.engine.hardware import resolve_hardware
from cvtool.engine.schedule import build_scheduler
from cvtool.errors import CvtoolError
from cvtool.metrics.classification import ClassificationEvaluator
from cvtool.utils.atomic import atomic_write


def hardware_cfg(**changes) -> dict:
    """The shipped hardware=cpu config, with changes."""
    from cvtool.commands.components import plain
    from cvtool.config import runner

    return plain(runner.compose("train", ["hardware=cpu"]).hardware) | changes


def lrs(sched_cfg: dict, steps_per_epoch: int, epochs: int) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, sched_cfg, steps_per_epoch, epochs)
    values = []
    for _ in range(steps_per_epoch * epochs):
        values.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return values


def test_cosine_with_linear_warmup_hits_the_formula():
    values = lrs({"name": "cosine", "warmup_epochs": 1.0, "warmup_start_ratio": 0.1, "min_lr_ratio": 0.0}, 10, 4)
    cosine = [0.5 * (1 + math.cos(math.pi * s / 40)) for s in range(40)]
    warm = [0.1 + 0.9 * s / 10 for s in range(10)] + [1.0] * 30
    assert values == pytest.approx([c * w for c, w in zip(cosine, warm)], abs=1e-12)


def test_step_and_multistep_decay_at_epoch_boundaries():
    step = lrs({"name": "step", "warmup_epochs": 0.0, "warmup_start_ratio": 0.1, "step_epochs": 2, "gamma": 0.5}, 3, 5)
    assert step == pytest.approx([1.0] * 6 + [0.5] * 6 + [0.25] * 3)
    multi = lrs({"name": "multistep", "warmup_epochs": 0.0, "warmup_start_ratio": 0.1, "milestones": [1, 3],
                 "gamma": 0.1}, 2, 4)
    assert multi == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_poly_decay_is_torchvision_segmentation_formula():
    values = lrs({"name": "poly", "warmup_epochs": 0.0, "warmup_start_ratio": 0.001, "power": 0.9,
                  "milestones": [], "gamma": 0.1, "min_lr_ratio": 0.0}, 5, 2)
    assert values == pytest.approx([(1 - s / 10) ** 0.9 for s in range(10)], abs=1e-12)


def test_evaluator_counts_hand_computed_case():
    ev = ClassificationEvaluator(num_classes=3, topk=2)
    logits = torch.tensor([[3.0, 2.0, 1.0],   # true 0: top1 hit
                           [3.0, 2.0, 1.0],   # true 1: top2 hit only
                           [3.0, 2.0, 1.0],   # true 2: miss
                           [0.0, 1.0, 5.0]])  # true 2: top1 hit
    ev.process({"target": torch.tensor([0, 1, 2, 2])}, logits)
    metrics = ev.evaluate()
    assert metrics == {"top1": 0.5, "top5": 0.75, "num_samples": 4, "per_class_acc": [1.0, 0.0, 0.5]}


def test_evaluator_reports_null_for_classes_without_samples():
    ev = ClassificationEvaluator(num_classes=3)
    ev.process({"target": torch.tensor([0])}, torch.tensor([[1.0, 0.0, 0.0]]))
    assert ev.evaluate()["per_class_acc"] == [1.0, None, None]


def test_atomic_write_keeps_old_file_when_writer_fails(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")

    def broken(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_checkpoint_roundtrip_with_weights_only_and_bad_files(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "config": "a: 1", "task": "classification", "class_names": ["a"]}
    path = save_checkpoint(tmp_path / "c.pt", state)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(2))
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CvtoolError, match="t.pt"):
        load_checkpoint(truncated)
    foreign = save_checkpoint(tmp_path / "f.pt", {"weights": torch.ones(1)})
    with pytest.raises(CvtoolError, match="not a cvtool checkpoint"):
        load_checkpoint(foreign)


def test_gpu_hardware_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    cfg = hardware_cfg(device="cuda", amp="auto", channels_last="auto", pin_memory="auto")
    with pytest.raises(CvtoolError, match="hardware=cpu"):
        resolve_hardware(cfg)
    from cvtool.engine.hardware import native_cpu_bf16

    # auto AMP on the CPU: bf16 where the CPU computes it natively, full precision elsewhere
    assert resolve_hardware(cfg | {"device": "auto"}).amp_dtype == (torch.bfloat16 if native_cpu_bf16() else None)


def test_amp_auto_on_cpu_leaves_models_marked_amp_on_cpu_false_in_full_precision(monkeypatch):
    from cvtool.commands import components as C
    from cvtool.config import runner
    from cvtool.engine import hardware

    monkeypatch.setattr(hardware, "native_cpu_bf16", lambda: True)
    cfg = hardware_cfg(amp="auto")
    assert resolve_hardware(cfg).amp_dtype == torch.bfloat16
    assert resolve_hardware(cfg, amp_on_cpu=False).amp_dtype is None
    assert resolve_hardware(cfg | {"amp": "bf16"}, amp_on_cpu=False).amp_dtype == torch.bfloat16  # asked for
    ssdlite = runner.compose("train", ["task=detection", "model=ssdlite", "hardware.device=cpu"])
    assert C.setup(ssdlite).amp_dtype is None  # its depthwise convs: slower and NaN-prone in bf16 on CPUs
    yolo = runner.compose("train", ["task=detection", "model=yolo", "hardware.device=cpu"])
    assert C.setup(yolo).amp_dtype == torch.bfloat16
    fcn8s = runner.compose("train", ["task=segmentation", "hardware.device=cpu"])
    assert fcn8s.model.name == "fcn8s" and C.setup(fcn8s).amp_dtype is None  # diverged in bf16 on an AMX CPU
    assert C.task_from(ssdlite).build_model(C.plain(ssdlite.model), 3) is not None  # not a builder argument


def test_channels_last_except_group_norm_models_on_cpu():
    from torch import nn

    from cvtool.commands.components import to_device

    hw = resolve_hardware(hardware_cfg(channels_last=True))
    bn = to_device(nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32)), hw)
    gn = to_device(nn.Sequential(nn.Conv2d(3, 32, 3), nn.GroupNorm(8, 32)), hw)
    assert bn[0].weight.is_contiguous(memory_format=torch.channels_last) and not bn[0].weight.is_contiguous()
    assert gn[0].weight.is_contiguous()  # NHWC GroupNorm backward is ~10x slower on CPUs


def test_ddp_hardware_outside_torchrun_explains_the_launch(monkeypatch):
    for key in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    cfg = hardware_cfg(distributed=True)
    with pytest.raises(CvtoolError, match="torchrun"):
        resolve_hardware(cfg)
    assert os.environ.get("RANK") is None


class ToyTask:
    """A regression adapter: enough to drive the Trainer without any dataset."""

    name = "toy"
    amp_inference = True

    def preprocess(self, batch, hardware):
        x, y = batch
        return {"x": x.float(), "y": y.float()}

    def batch_size(self, batch):
        return batch["x"].shape[0]

    def training_step(self, model, batch):
        return {"loss": torch.nn.functional.mse_loss(model(batch["x"]).squeeze(1), batch["y"])}


def toy_weights_after_one_epoch(batch_size: int, grad_accum: int, tmp_path) -> torch.Tensor:
    from cvtool.data.samplers import ResumableSampler
    from cvtool.engine.metrics_log import MetricsLogger
    from cvtool.engine.trainer import Trainer

    g = torch.Generator().manual_seed(1)
    data = torch.utils.data.TensorDataset(torch.randn(16, 3, generator=g), torch.randn(16, generator=g))
    sampler = ResumableSampler(data, num_replicas=1, rank=0, shuffle=False, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, {"name": "step", "warmup_epochs": 0.0, "warmup_start_ratio": 1.0,
                                  "step_epochs": 100, "gamma": 0.1}, len(loader) // grad_accum, 1)
    hw = resolve_hardware(hardware_cfg())
    trainer = Trainer(model, ToyTask(), opt, sched, loader, hardware=hw, epochs=1, grad_accum=grad_accum,
                      clip_grad_norm=None, stop_after=None, logger=MetricsLogger(None), checkpoint_meta={})
    trainer.fit()
    assert trainer.step == 16 // (batch_size * grad_accum)
    return model.weight.detach().clone()


class ExplodingTask(ToyTask):
    """The toy regression whose loss turns NaN from the `at`-th training step on."""

    def __init__(self, at: int):
        self.at, self.calls = at, 0

    def training_step(self, model, batch):
        self.calls += 1
        loss = super().training_step(model, batch)["loss"]
        return {"loss": loss * math.nan if self.calls >= self.at else loss}


def test_a_nan_loss_stops_training_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    from cvtool.data.samplers import ResumableSampler
    from cvtool.engine.checkpoint import load_checkpoint
    from cvtool.engine.hooks import CheckpointHook
    from cvtool.engine.metrics_log import MetricsLogger
    from cvtool.engine.trainer import Trainer

    data = torch.utils.data.TensorDataset(torch.randn(16, 3), torch.randn(16))
    sampler = ResumableSampler(data, num_replicas=1, rank=0, shuffle=False, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=sampler)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(opt, {"name": "step", "warmup_epochs": 0.0, "warmup_start_ratio": 1.0,
                                  "step_epochs": 100, "gamma": 0.1}, len(loader), 3)
    trainer = Trainer(model, ExplodingTask(at=6), opt, sched, loader, hardware=resolve_hardware(hardware_cfg()),
                      epochs=3, grad_accum=1, clip_grad_norm=1.0, stop_after=None,
                      logger=MetricsLogger(None),
                      checkpoint_meta={"config": {}, "task": "toy", "class_names": []})
    trainer.register_hooks(checkpoint=CheckpointHook(tmp_path))
    with pytest.raises(CvtoolError, match=r"NaN or infinite between steps 4 and 8 \(epoch 2\); .*last.pt keeps") as err:
        trainer.fit()
    assert "optim.lr" in str(err.value) and "hardware.amp=off" in str(err.value)
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["epoch"] == 1 and all(torch.isfinite(v).all() for v in last["model"].values())


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    big = toy_weights_after_one_epoch(8, 1, tmp_path)
    accumulated = toy_weights_after_one_epoch(4, 2, tmp_path)
    assert torch.allclose(big, accumulated, atol=1e-6)
    assert not torch.allclose(big, toy_weights_after_one_epoch(4, 1, tmp_path))


def test_early_stop_after_patience_validations_without_improvement():
    from types import SimpleNamespace

    from cvtool.engine.hooks import EarlyStopHook, EvalHook

    evaluation = EvalHook(loader=None, evaluator=None, metric="top1", every=1)
    stopper = EarlyStopHook(evaluation, patience=2)
    trainer = SimpleNamespace(should_stop=False)
    for epoch, (value, expected_stop) in enumerate([(0.5, False), (0.6, False), (0.6, False), (0.55, True)]):
        evaluation.record(value, epoch)
        stopper.after_epoch(trainer)
        assert trainer.should_stop == expected_stop
    assert (evaluation.best, evaluation.best_epoch) == (0.6, 1)


def test_ema_decay_warms_up_then_holds_and_averages_buffers():
    from torch.optim.swa_utils import AveragedModel

    from cvtool.engine.hooks import warmed_up_ema

    model = torch.nn.BatchNorm1d(1)
    ema = AveragedModel(model, avg_fn=warmed_up_ema(0.9), use_buffers=True)
    expected = 0.0  # the initial weight (the copy made by AveragedModel counts as update n = 0)
    with torch.no_grad():
        model.weight.fill_(0.0)
        ema.update_parameters(model)  # n = 0: copied
        for n, value in enumerate([1.0, 1.0, 1.0, 1.0], start=1):
            model.weight.fill_(value)
            model.running_mean.fill_(value)
            ema.update_parameters(model)
            decay = min(0.9, (1 + n) / (10 + n))  # 2/11, 3/12, 4/13, 5/14: far below 0.9 early on
            expected = decay * expected + (1 - decay) * value
    assert ema.module.weight.item() == pytest.approx(expected, abs=1e-6)
    assert ema.module.running_mean.item() == pytest.approx(expected, abs=1e-6)  # buffers averaged too
    assert ema.module.num_batches_tracked.item() == model.num_batches_tracked.item()


def test_files_not_in_torch_zip_format_are_named_as_not_a_checkpoint_without_unpickling(tmp_path):
    from cvtool.models.weights import read_state_dict

    legacy = tmp_path / "legacy.pt"
    state = {"model": {"w": torch.ones(2)}, "config": "a: 1", "task": "classification", "class_names": ["a"]}
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    for path in (legacy, text):
        for lazy in (False, True):  # lazy (mmap) used to fail with torch's "mmap can only be used with ..."
            with pytest.raises(CvtoolError) as err:
                load_checkpoint(path, lazy=lazy)
            assert err.value.what.startswith("not a cvtool/PyTorch checkpoint") and err.value.where == str(path)
            assert "mmap" not in err.value.line()
        with pytest.raises(CvtoolError, match="^not a cvtool/PyTorch weights file") as err:
            read_state_dict(path)
        assert err.value.where == str(path)
