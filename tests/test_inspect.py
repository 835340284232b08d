"""`cvtool inspect`: per-layer shapes, parameters, multiply-adds and receptive fields, checked against the
published figures and the lectures' formulas."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from cvtool.commands import inspect_model
from cvtool.config import runner
from cvtool.errors import CvtoolError
from cvtool.models import create_model
from cvtool.models.summary import summarize

# torchvision's reported GFLOPS (multiply-adds) at 224x224 and parameter counts
PUBLISHED = {"resnet18": (11.69e6, 1.81e9), "resnet34": (21.80e6, 3.66e9), "resnet50": (25.56e6, 4.09e9),
             "resnet101": (44.55e6, 7.80e9), "resnet152": (60.19e6, 11.51e9), "vgg16": (138.36e6, 15.47e9),
             "alexnet": (61.10e6, 0.71e9)}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_totals_agree_with_published_figures_within_2_percent(name):
    params, macs = PUBLISHED[name]
    torch.manual_seed(0)
    summary = summarize(create_model(name, num_classes=1000), torch.zeros(1, 3, 224, 224))
    assert summary.params == pytest.approx(params, rel=0.02)
    assert summary.macs == pytest.approx(macs, rel=0.02)
    assert sum(layer.params for layer in summary.layers) == summary.params  # leaves add up to the total


def out_size(n: int, k: int, s: int, p: int, d: int) -> int:
    """The lectures' formula: out = floor((N + 2P - K') / S) + 1 with K' = K + (K - 1)(D - 1)."""
    return math.floor((n + 2 * p - (k + (k - 1) * (d - 1))) / s) + 1


def test_receptive_fields_and_shapes_follow_the_formulas():
    layers = [(3, 1, 1, 1), (3, 2, 0, 1), (5, 1, 4, 2), (3, 3, 2, 3), (2, 2, 0, 1)]  # K, S, P, D
    model = nn.Sequential(*[nn.Conv2d(2, 2, k, s, p, d) if i < 4 else nn.MaxPool2d(k, s)
                            for i, (k, s, p, d) in enumerate(layers)])
    summary = summarize(model, torch.zeros(1, 2, 97, 131))
    rf, jump, h, w = 1, 1, 97, 131
    for layer, (k, s, p, d) in zip(summary.layers, layers):
        rf, jump = rf + (k + (k - 1) * (d - 1) - 1) * jump, jump * s
        h, w = out_size(h, k, s, p, d), out_size(w, k, s, p, d)
        assert layer.shape == (1, 2, h, w)
        assert layer.rf == (rf, rf) and layer.stride == (jump, jump)
    assert summary.layers[0].macs == 2 * 2 * 9 * 97 * 131  # C_in x C_out x K^2 x output pixels


def test_skip_connections_take_the_larger_field_and_upsampling_divides_the_stride():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.deep = nn.Sequential(nn.Conv2d(1, 1, 3, 2, 1), nn.Conv2d(1, 1, 3, 2, 1))
            self.up = nn.Upsample(scale_factor=4)
            self.shallow = nn.Conv2d(1, 1, 1)

        def forward(self, x):
            return self.up(self.deep(x)) + self.shallow(x)

    rows = {layer.name: layer for layer in summarize(Net(), torch.zeros(1, 1, 32, 32)).layers}
    assert rows["deep.1"].rf == (7, 7) and rows["deep.1"].stride == (4, 4)
    assert rows["up"].rf == (7, 7) and rows["up"].stride == (1, 1)
    assert rows["shallow"].rf == (1, 1)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    path = tmp_path / "resnet18.json"
    summary = inspect_model.main(["model=resnet18", "input_size=128,160", f"json={path}", "inspect.num_classes=10"])
    out = capsys.readouterr().out
    assert "resnet18 (10 classes) at 128x160" in out and "layer4.1.conv2" in out
    stored = json.loads(path.read_text())
    assert stored["input_size"] == [128, 160] and stored["params"] == summary.params
    fc = next(layer for layer in stored["layers"] if layer["name"] == "fc")
    assert fc["shape"] == [1, 10] and fc["params"] == 512 * 10 + 10
    assert stored["layers"][0]["shape"] == [1, 64, 64, 80]


@pytest.mark.parametrize("overrides", [["task=segmentation", "model=unet", "input_size=97,131"],
                                       ["task=detection", "model=ssdlite", "input_size=128"]])
def test_dense_and_detection_models_are_inspected(overrides):
    cfg = runner.compose("inspect", overrides)
    summary = inspect_model.inspect(cfg)
    assert summary.macs > 0 and summary.params > 0
    assert any(layer.rf is not None and layer.rf[0] > 30 for layer in summary.layers)


def test_bad_input_size_is_a_clear_error():
    with pytest.raises(CvtoolError, match="input_size"):
        inspect_model.inspect(runner.compose("inspect", ["model=resnet18", "input_size=big"]))
    with pytest.raises(CvtoolError, match="does not run on a 8x8 input"):
        inspect_model.inspect(runner.compose("inspect", ["model=alexnet", "input_size=8"]))


def test_a_models_task_is_implied_by_its_name():
    """`cvtool inspect model=unet` needs no task=segmentation (the registry knows unet is a segmenter)."""
    summary = inspect_model.main(["model=unet", "input_size=64"])
    assert tuple(summary.layers[-1].shape[-2:]) == (64, 64)
    assert inspect_model.with_models_task(["model=yolo"]) == ["task=detection", "model=yolo"]
    assert inspect_model.with_models_task(["task=detection", "model=yolo"]) == ["task=detection", "model=yolo"]
