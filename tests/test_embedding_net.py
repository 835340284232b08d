"""embedding_net: a registered classifier as trunk, its last linear layer replaced by a normalised embedding head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from cvtool.errors import CvtoolError
from cvtool.models import builder_kwargs, create_model, model_info

CONF = Path(__file__).resolve().parents[1] / "conf" / "model" / "embedding_net.yaml"


def test_embeddings_have_dim_columns_of_unit_length():
    model = create_model("embedding_net", num_classes=5, trunk="shapes_cnn", dim=64).eval()
    embeddings = model(torch.randn(3, 3, 64, 64))
    assert embeddings.shape == (3, 64)
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(3), atol=1e-5)
    assert model_info("embedding_net").task == "embedding"


def test_normalize_false_returns_the_head_output_that_normalize_scales():
    torch.manual_seed(0)
    plain = create_model("embedding_net", num_classes=5, dim=16, normalize=False).eval()
    unit = create_model("embedding_net", num_classes=5, dim=16).eval()
    unit.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)
    raw = plain(x)
    assert not torch.allclose(raw.norm(dim=1), torch.ones(2), atol=1e-2)
    assert torch.allclose(unit(x), F.normalize(raw, dim=1), atol=1e-6)


@pytest.mark.parametrize(("trunk", "options", "side", "features"), [
    ("shapes_cnn", {}, 64, 96),  # width 24 -> 4 x 24 channels before its last linear layer
    ("lenet5", {}, 32, 84),  # f6 -> output: 84 features
    ("resnet18", {"small_input": True}, 32, 512),
])
def test_trunk_last_linear_becomes_the_embedding_heads_input(trunk, options, side, features):
    model = create_model("embedding_net", num_classes=5, trunk=trunk, trunk_options=options, dim=8, input_size=side)
    assert model.head[0].in_features == features
    linears = [m for m in model.trunk.modules() if isinstance(m, nn.Linear)]
    assert all(m.out_features != 1 for m in linears)  # the trunk's 1-class output layer is gone
    assert isinstance(model.get_submodule(model.explained_layer), nn.Conv2d)
    model.train()(torch.randn(2, 3, side, side)).sum().backward()
    assert model.eval()(torch.randn(2, 3, side, side)).shape == (2, 8)


def test_explained_layer_is_the_trunks_last_convolution():
    model = create_model("embedding_net", num_classes=5, trunk="resnet18", trunk_options={"small_input": True})
    assert model.explained_layer == "trunk.layer4.1.conv2"


def test_classifier_gives_logits_over_the_training_identities_from_the_unnormalised_head():
    model = create_model("embedding_net", num_classes=5, dim=16, classifier=True, head_bn=True).eval()
    assert isinstance(model.head[1], nn.BatchNorm1d)
    x = torch.randn(2, 3, 32, 32)
    embeddings, logits = model(x, with_logits=True)
    assert logits.shape == (2, 5) and torch.equal(embeddings, model(x))
    features = model.head(model.trunk(x))
    torch.testing.assert_close(logits, model.classifier(features))
    without = create_model("embedding_net", num_classes=5, dim=16)
    assert without.classifier is None
    with pytest.raises(CvtoolError, match="model.classifier"):
        without(x, with_logits=True)


def test_a_detection_trunk_is_refused_with_the_classifiers_listed():
    with pytest.raises(CvtoolError, match="faster_rcnn_mobilenet is a detection model") as err:
        create_model("embedding_net", num_classes=5, trunk="faster_rcnn_mobilenet")
    assert err.value.where == "model.trunk" and "shapes_cnn" in err.value.fix and "resnet18" in err.value.fix


def test_a_trunk_without_a_linear_layer_is_refused():
    with pytest.raises(CvtoolError, match="squeezenet1_1 has no linear layer"):
        create_model("embedding_net", num_classes=5, trunk="squeezenet1_1")


def test_the_trunks_smallest_input_is_checked():
    with pytest.raises(CvtoolError, match="lenet5 needs inputs of at least 32 px"):
        create_model("embedding_net", num_classes=5, trunk="lenet5", input_size=16)


def test_weights_name_is_refused_but_a_local_file_loads(tmp_path):
    with pytest.raises(CvtoolError, match="trunk_options"):
        create_model("embedding_net", num_classes=5, weights="DEFAULT")
    torch.manual_seed(1)
    model = create_model("embedding_net", num_classes=5, dim=16).eval()
    torch.save(model.state_dict(), tmp_path / "embedding.pt")
    loaded = create_model("embedding_net", num_classes=5, dim=16, weights=str(tmp_path / "embedding.pt")).eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))


def test_config_documents_every_option_with_the_builders_defaults():
    conf = yaml.safe_load(CONF.read_text())
    assert conf.pop("name") == "embedding_net" and conf.pop("weights") is None
    assert conf.pop("trunk_options") == {}
    defaults = builder_kwargs("embedding_net")
    assert defaults.pop("trunk_options") is None and defaults.pop("input_size") is None  # input_size: from the data
    assert conf == defaults
