"""Model registry, builders, pretrained/local weights and the papers' layer shapes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from conftest import forward_at
from torch import nn
from torchvision.models import GoogLeNet_Weights

from cvtool.errors import CvtoolError
from cvtool.models import (
    builder_kwargs,
    count_parameters,
    create_model,
    list_models,
    model_info,
    register_model,
)
from cvtool.models.se_resnet import SqueezeExcitation
from cvtool.models.torchvision_classifiers import first_conv_path
from cvtool.tasks.images import NOT_BUILDER_ARGS

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"
CLASSIFIERS = list_models(task="classification")
# Deeper/wider siblings whose code path a fast test covers through the family member in the comment.
SLOW = {
    "vgg13", "vgg16", "vgg19",  # vgg11
    "vgg13_bn", "vgg16_bn", "vgg19_bn",  # vgg11_bn
    "resnet34", "resnet101", "resnet152", "resnext101_32x8d", "wide_resnet101_2",  # resnet18/50, *50
    "densenet169", "mobilenet_v3_large", "squeezenet1_0", "se_resnet34",  # densenet121, ..._small, 1_1, 18
}


def train_step(model: nn.Module, size: int, in_channels: int = 3) -> torch.Tensor:
    """One forward/backward on a batch of 2 in train mode; returns the logits."""
    model.train()
    logits = model(torch.randn(2, in_channels, size, size))
    nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    return logits


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CLASSIFIERS]
)
def test_classifier_trains_one_step_at_its_smallest_input(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7)
    logits = train_step(model, max(model_info(name).min_size, 32))
    assert logits.shape == (2, 7)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in CLASSIFIERS if model_info(n).min_size > 1 and n != "lenet5"])
def test_min_size_is_the_smallest_input_that_works(name):
    model = create_model(name, num_classes=3)
    size = model_info(name).min_size

    forward_at(model, size)
    with pytest.raises((RuntimeError, ValueError)):
        forward_at(model, size - 1)


@pytest.mark.parametrize("name", ["resnet18", "vgg11", "mobilenet_v3_small", "squeezenet1_1", "se_resnet18",
                                  "xception", "lenet5", "shapes_cnn"])
def test_single_channel_input_replaces_the_stem(name):
    options = {"middle_blocks": 1} if name == "xception" else {}
    model = create_model(name, num_classes=4, in_channels=1, **options)
    assert model.get_submodule(first_conv_path(model)).in_channels == 1
    assert train_step(model, max(model_info(name).min_size, 32), in_channels=1).shape == (2, 4)


@pytest.mark.parametrize("name", ["resnet18", "se_resnet18"])
def test_small_input_stem_keeps_32px_at_4x4_before_pooling(name):
    features = {}
    for small in (True, False):
        model = create_model(name, num_classes=10, small_input=small).eval()
        model.layer4.register_forward_hook(lambda m, i, o, small=small: features.__setitem__(small, o.shape))
        model(torch.randn(1, 3, 32, 32))
    assert features[True][-2:] == (4, 4) and features[False][-2:] == (1, 1)


def test_googlenet_with_aux_logits_returns_a_namedtuple_in_train_mode():
    model = create_model("googlenet", num_classes=5, aux_logits=True)
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == out.aux_logits1.shape == out.aux_logits2.shape == (2, 5)
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_every_classifier_has_a_config_whose_keys_the_builder_accepts():
    for name in CLASSIFIERS:
        conf = yaml.safe_load((CONF_MODEL / f"{name}.yaml").read_text())
        assert conf.pop("name") == name and conf.pop("weights") is None
        conf = {k: v for k, v in conf.items() if k not in NOT_BUILDER_ARGS}  # e.g. native_size: not the builder's
        assert conf == builder_kwargs(name), name  # same keys, and the config repeats the builder's defaults


def test_every_model_config_names_a_registered_model_with_valid_options():
    for path in sorted(CONF_MODEL.glob("*.yaml")):
        conf = yaml.safe_load(path.read_text())
        assert conf["name"] == path.stem
        accepted = builder_kwargs(conf["name"])
        assert accepted is None or set(conf) - set(NOT_BUILDER_ARGS) <= set(accepted), path.name


def test_list_models_filters_by_pattern_and_task():
    assert list_models("resnet*") == ["resnet101", "resnet152", "resnet18", "resnet34", "resnet50"]
    assert list_models("lenet5", task="detection") == []
    assert "shapes_cnn" in list_models(task="classification")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="resnet18.*already registered"):
        register_model("resnet18", task="classification", min_size=1, description="again")(lambda **kw: None)
    assert model_info("resnet18").description.startswith("ResNet-18")


def test_unknown_model_lists_the_closest_names_first():
    with pytest.raises(CvtoolError) as err:
        create_model("resnet19", num_classes=2)
    assert err.value.what == "unknown model 'resnet19'"
    assert err.value.fix.startswith("did you mean resnet18")
    assert err.value.fix.index("resnet18") < err.value.fix.index("alexnet")


def test_unknown_option_names_the_key_and_the_accepted_ones():
    with pytest.raises(CvtoolError) as err:
        create_model("resnet18", num_classes=2, small_inptu=True)
    assert "'small_inptu'" in err.value.what
    assert err.value.fix == "resnet18 accepts: small_input, zero_init_residual"


def test_input_below_min_size_says_what_is_needed():
    with pytest.raises(CvtoolError) as err:
        create_model("alexnet", num_classes=2, input_size=32)
    assert err.value.what == "model alexnet needs inputs of at least 63 px, got 32"
    assert "dataset.image_size" in err.value.fix and "small_input=true" in err.value.fix


def test_local_weights_load_the_backbone_and_skip_a_head_of_another_size(tmp_path, caplog):
    source = create_model("resnet18", num_classes=10)
    path = tmp_path / "resnet18_10.pt"
    torch.save({"model": source.state_dict(), "epoch": 3}, path)  # a cvtool checkpoint
    with caplog.at_level(logging.INFO, logger="cvtool.models.weights"):
        model = create_model("resnet18", num_classes=3, weights=str(path))
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, source.layer4[1].bn2.running_var)
    assert model.fc.weight.shape == (3, 512)
    assert "loaded 120/122 tensors; re-initialised (shape differs): fc.weight, fc.bias" in caplog.text


def test_local_weights_accept_a_raw_state_dict(tmp_path):
    source = create_model("lenet5", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "lenet.pth")
    model = create_model("lenet5", num_classes=10, weights=str(tmp_path / "lenet.pth"))
    assert model.state_dict().keys() == source.state_dict().keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.state_dict().items())


def test_truncated_weights_file_is_named_as_corrupt(tmp_path):
    path = tmp_path / "broken.pt"
    torch.save(create_model("lenet5", num_classes=10).state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CvtoolError) as err:
        create_model("lenet5", num_classes=10, weights=str(path))
    assert "corrupt or truncated" in err.value.what and err.value.where == str(path)


def test_missing_or_foreign_weights_file_is_an_error(tmp_path):
    with pytest.raises(CvtoolError, match="weights file not found"):
        create_model("lenet5", num_classes=10, weights=str(tmp_path / "nope.pt"))
    torch.save(create_model("lenet5", num_classes=10).state_dict(), tmp_path / "lenet.pt")
    with pytest.raises(CvtoolError, match="matches only 0 of the model's"):
        create_model("shapes_cnn", num_classes=10, weights=str(tmp_path / "lenet.pt"))




def test_uncached_pretrained_weights_say_where_to_put_the_file(hub_dir):
    with pytest.raises(CvtoolError) as err:
        create_model("resnet18", num_classes=3, weights="DEFAULT")
    enum = "ResNet18_Weights.IMAGENET1K_V1"
    assert err.value.what == f"could not download pretrained weights {enum} (no network?)"
    assert err.value.fix == (f"put resnet18-f37072fd.pth into {hub_dir / 'checkpoints'} "
                             "or pass weights=PATH to a local file")


def test_cached_pretrained_weights_load_and_get_a_new_head(hub_dir):
    imagenet = create_model("resnet18", num_classes=1000)
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(imagenet.state_dict(), hub_dir / "checkpoints" / "resnet18-f37072fd.pth")
    model = create_model("resnet18", num_classes=3, weights="ResNet18_Weights.IMAGENET1K_V1")
    assert torch.equal(model.layer1[0].conv1.weight, imagenet.layer1[0].conv1.weight)
    assert model.fc.weight.shape == (3, 512)
    grey = create_model("resnet18", num_classes=3, in_channels=1, weights="IMAGENET1K_V1")
    assert torch.allclose(grey.conv1.weight, imagenet.conv1.weight.sum(dim=1, keepdim=True))


def test_pretrained_googlenet_drops_or_keeps_its_auxiliary_heads(hub_dir):
    imagenet = torchvision.models.googlenet(aux_logits=True, init_weights=False)
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(imagenet.state_dict(), hub_dir / "checkpoints" / Path(GoogLeNet_Weights.DEFAULT.url).name)
    plain = create_model("googlenet", num_classes=5, weights="DEFAULT")
    assert plain.aux1 is None and plain.fc.out_features == 5 and not plain.transform_input
    assert torch.equal(plain.conv1.conv.weight, imagenet.conv1.conv.weight)
    with pytest.warns(UserWarning, match="auxiliary heads .* NOT pretrained"):
        with_aux = create_model("googlenet", num_classes=5, weights="DEFAULT", aux_logits=True)
    assert with_aux.aux1.fc2.out_features == with_aux.aux2.fc2.out_features == 5


def test_unknown_pretrained_weights_name_lists_the_valid_ones(hub_dir):
    with pytest.raises(CvtoolError) as err:
        create_model("resnet50", num_classes=3, weights="IMAGENET1K_V9")
    assert "DEFAULT, IMAGENET1K_V1, IMAGENET1K_V2" in err.value.fix
    with pytest.raises(CvtoolError, match="lenet5 has no pretrained weights named 'DEFAULT'"):
        create_model("lenet5", num_classes=3, weights="DEFAULT")


def test_lenet5_has_the_papers_layer_shapes_and_61706_parameters():
    model = create_model("lenet5", num_classes=10, in_channels=1)
    shapes, x = {}, torch.randn(1, 1, 32, 32)
    for name, layer in model.named_children():
        x = layer(x)
        shapes[name] = tuple(x.shape[1:])
    assert shapes["c1"] == (6, 28, 28) and shapes["s2"] == (6, 14, 14)
    assert shapes["c3"] == (16, 10, 10) and shapes["s4"] == (16, 5, 5) and shapes["c5"] == (120, 1, 1)
    assert shapes["output"] == (10,)
    assert count_parameters(model) == 156 + 2416 + 48120 + 10164 + 850 == 61706
    assert create_model("lenet5", num_classes=10)(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_se_excitation_gates_each_channel_in_the_open_unit_interval():
    se = SqueezeExcitation(64)
    gates = se.excitation(torch.randn(3, 64, 8, 8) * 10)
    assert gates.shape == (3, 64, 1, 1) and bool(((gates > 0) & (gates < 1)).all())
    assert se.fc1.out_channels == 64 // 16


def test_xception_middle_flow_depth_and_width_are_options():
    default = create_model("xception", num_classes=10)
    small = create_model("xception", num_classes=10, middle_blocks=2, width=0.5)
    assert len(default.middle) == 8 and len(small.middle) == 2
    assert small.fc.in_features == 1024 and count_parameters(small) < count_parameters(default) / 4
