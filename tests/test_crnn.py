"""Text recognition models: crnn (per-frame CTC scores, T = W / 4) and word_classifier (one class per word)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import cvtool.models.crnn  # noqa: F401  (registers the text models)
from cvtool.errors import CvtoolError
from cvtool.models import builder_kwargs, create_model, model_info
from cvtool.tasks.ctc_decoding import ctc_loss, greedy_decode

CONF = Path(__file__).resolve().parents[1] / "conf" / "model"
TINY = {"width": 4, "hidden": 8}


@pytest.mark.parametrize(("options", "size", "frames"), [
    ({"width": 4, "hidden": 8}, (32, 128), 32),
    ({"width": 8, "hidden": 16, "layers": 1}, (32, 100), 25),
    ({"width": 4, "hidden": 8, "layers": 3}, (64, 64), 16),
])
def test_crnn_emits_one_frame_per_four_columns(options, size, frames):
    model = create_model("crnn", num_classes=37, input_size=size, **options)
    assert model.frame_stride == 4 and model_info("crnn").task == "text"
    # each frame is a column of the last conv: 8 x width channels x height / 16 rows
    assert model.rnn.input_size == 8 * options["width"] * size[0] // 16
    assert model(torch.randn(2, 3, *size)).shape == (2, frames, 37)


def test_crnn_reads_any_width_at_its_height():
    model = create_model("crnn", num_classes=5, in_channels=1, **TINY).eval()  # input_size None: 32 px high
    assert model(torch.randn(1, 1, 32, 48)).shape == (1, 12, 5)
    with pytest.raises(CvtoolError, match="built for 32 px high inputs, got 48 x 128"):
        model(torch.randn(1, 1, 48, 128))


@pytest.mark.parametrize("size", [(40, 128), (32, 126), (16, 64)])
def test_crnn_refuses_sizes_it_cannot_collapse_to_whole_frames(size):
    # 40: the four height halvings leave a part row; 126: not whole frames; 16: under min_size
    with pytest.raises(CvtoolError, match="dataset.image_size|at least 32 px"):
        create_model("crnn", num_classes=5, input_size=size)


@pytest.mark.parametrize("name", ["crnn", "word_classifier"])
def test_text_models_refuse_named_weights(name):
    with pytest.raises(CvtoolError, match="no pretrained weights named 'DEFAULT'"):
        create_model(name, num_classes=5, weights="DEFAULT")


def test_word_classifier_flattens_the_whole_final_map():
    model = create_model("word_classifier", num_classes=50, input_size=(32, 128), width=4, hidden=32)
    # 8 x width channels on a 2 x 8 map (32 x 128 halved four times): letter positions kept
    assert model.head[1].in_features == 8 * 4 * 2 * 8
    assert model(torch.randn(3, 3, 32, 128)).shape == (3, 50)
    with pytest.raises(CvtoolError, match="built for 32 x 128 inputs, got 32 x 96"):
        model(torch.randn(1, 3, 32, 96))


def test_word_classifier_with_a_registered_classifier_as_trunk():
    model = create_model("word_classifier", num_classes=50, input_size=(32, 128), trunk="shapes_cnn",
                         trunk_options={"width": 8})
    assert [m.out_features for m in model.modules() if isinstance(m, nn.Linear)] == [50]
    assert model[0].out_channels == 8  # the trunk's own option
    assert model(torch.randn(2, 3, 32, 128)).shape == (2, 50)


def test_word_classifier_refuses_a_non_classifier_trunk_and_orphan_trunk_options():
    with pytest.raises(CvtoolError, match="model.trunk=crnn is a text model"):
        create_model("word_classifier", num_classes=5, trunk="crnn")
    with pytest.raises(CvtoolError, match="trunk_options needs a model.trunk"):
        create_model("word_classifier", num_classes=5, trunk_options={"width": 8})


@pytest.mark.parametrize("name", ["crnn", "word_classifier"])
def test_model_yaml_names_every_builder_option(name):
    conf = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert conf["name"] == name and conf["weights"] is None
    assert set(conf) - {"name", "weights"} == set(builder_kwargs(name)) - {"input_size"}
    create_model(name, num_classes=5, input_size=(32, 128),
                 **{k: v for k, v in conf.items() if k not in ("name", "weights")})


def test_every_crnn_parameter_gets_a_gradient_also_under_cpu_bf16_autocast():
    model = create_model("crnn", num_classes=6, **TINY)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(torch.randn(2, 3, 32, 64))
    ctc_loss(logits, [[1, 2, 3], [4, 4]]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_crnn_memorises_four_images_in_30_steps():
    torch.manual_seed(0)
    model = create_model("crnn", num_classes=6, width=8, hidden=32, layers=1)
    images = torch.randn(4, 3, 32, 16)  # 4 frames: the last target fills every one
    targets = [[1, 2, 3], [3, 3], [5], [4, 1, 4, 2]]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(30):
        loss = ctc_loss(model(images), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    paths, confidence = greedy_decode(model.eval()(images).detach())
    assert paths == targets and confidence.min() > 0.3


def exported_outputs(model: nn.Module, x: torch.Tensor, tmp_path: Path) -> dict[str, torch.Tensor]:
    """Outputs for `x` of `model` written to ONNX (TorchScript-based exporter) and scripted / traced TorchScript."""
    import onnxruntime

    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["image"])
        scripted, traced = torch.jit.script(model), torch.jit.trace(model, (x,))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return {"onnx": torch.from_numpy(session.run(None, {"image": x.numpy()})[0]), "script": scripted(x),
            "trace": traced(x)}


@pytest.mark.parametrize(("name", "options"), [("crnn", {"width": 4, "hidden": 16}), ("word_classifier", TINY)])
def test_exported_text_models_match_eager(name, options, tmp_path):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, input_size=(32, 64), **options).eval()
    x = torch.randn(2, 3, 32, 64)
    with torch.no_grad():
        expected = model(x)
        for fmt, output in exported_outputs(model, x, tmp_path).items():
            assert output.shape == expected.shape, fmt
            assert torch.allclose(output, expected, atol=1e-4), fmt
