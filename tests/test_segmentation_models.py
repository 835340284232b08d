"""Semantic-segmentation models: input-size logits for odd sizes, aux heads, the papers' structures, weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision
from conftest import forward_at
from torch import nn

from cvtool.errors import CvtoolError
from cvtool.models import builder_kwargs, create_model, list_models, model_info
from cvtool.models.fcn8s import upsampler
from cvtool.models.unet import mirror_pad, valid_input_size, valid_margin, valid_tile
from cvtool.tasks.images import NOT_BUILDER_ARGS

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"
SEGMENTERS = ["deeplabv3", "dilated", "fcn", "fcn8s", "lraspp", "segnet", "unet"]
OURS = ["dilated", "fcn8s", "segnet", "unet"]
H, W = 97, 131  # odd, and not a multiple of any stride
K = 3
TINY = {  # small widths keep every forward on 97x131 well under a second
    "unet": {"width": 2, "depth": 2},
    "segnet": {"width": 2, "depth": 3, "convs_per_stage": 1},
    "dilated": {"width": 2, "fc_width": 8},
    "fcn8s": {"width": 2, "fc_width": 8},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def logits_of(output: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    return output["out"] if isinstance(output, dict) else output


def train_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    """Train-mode forward and cross-entropy backward (aux logits weighted 0.4, as torchvision's recipe)."""
    model.train()
    output = model(x)
    target = torch.randint(0, K, (x.shape[0], *x.shape[-2:]))
    loss = nn.functional.cross_entropy(logits_of(output), target)
    if isinstance(output, dict):
        loss = loss + 0.4 * nn.functional.cross_entropy(output["aux"], target)
    loss.backward()
    return output


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        output = model.eval()(x)
    assert isinstance(output, torch.Tensor)
    return output


def assert_trained(model: nn.Module) -> None:
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(bool(g.abs().sum() > 0) for g in grads) > 0.9 * len(grads)


@pytest.mark.parametrize("name, options", [
    ("unet", TINY["unet"]),
    ("unet", {**TINY["unet"], "padding": "valid"}),
    ("unet", {**TINY["unet"], "aux": True}),
    ("segnet", TINY["segnet"]),
    ("dilated", TINY["dilated"]),
    ("fcn8s", TINY["fcn8s"]),
])
def test_our_models_train_and_return_input_size_logits(name, options):
    torch.manual_seed(0)
    model = create_model(name, num_classes=K, **options)
    x = torch.randn(2, 3, H, W)
    output = train_step(model, x)
    if options.get("aux"):  # deep supervision: bottleneck scores as a second, input-size output in training
        assert set(output) == {"out", "aux"} and output["aux"].shape == (2, K, H, W)
        output = output["out"]
    assert isinstance(output, torch.Tensor) and output.shape == (2, K, H, W)
    assert_trained(model)
    assert eval_logits(model, x).shape == (2, K, H, W)


@pytest.mark.parametrize("name, options", [
    ("lraspp", {}),
    ("deeplabv3", {"backbone": "mobilenet_v3_large"}),
    ("fcn", {"backbone": "resnet50"}),
    pytest.param("deeplabv3", {"backbone": "resnet50"}, marks=pytest.mark.slow),  # fcn's backbone, deeplab's head
])
def test_torchvision_segmenters_train_with_aux_logits_only_in_train_mode(name, options):
    torch.manual_seed(0)
    model = create_model(name, num_classes=K, **options)
    x = torch.randn(2, 3, H, W)
    output = train_step(model, x)
    if name == "lraspp":
        assert isinstance(output, torch.Tensor) and output.shape == (2, K, H, W)
    else:
        assert isinstance(output, dict) and set(output) == {"out", "aux"}
        assert output["out"].shape == output["aux"].shape == (2, K, H, W)
    assert_trained(model)
    assert eval_logits(model, x[:1]).shape == (1, K, H, W)


def test_torchvision_aux_head_can_be_left_out():
    model = create_model("deeplabv3", num_classes=K, backbone="mobilenet_v3_large", aux_loss=False)
    assert model.aux_classifier is None
    with torch.no_grad():
        assert model.train()(torch.randn(2, 3, 17, 23)).shape == (2, K, 17, 23)


def test_single_channel_input_replaces_the_backbone_stem():
    model = create_model("lraspp", num_classes=K, in_channels=1)
    assert model.backbone["0"][0].in_channels == 1
    assert eval_logits(model, torch.randn(1, 1, 21, 19)).shape == (1, K, 21, 19)


def test_unknown_backbone_lists_the_valid_ones():
    with pytest.raises(CvtoolError) as err:
        create_model("fcn", num_classes=K, backbone="mobilenet_v3_large")
    assert err.value.where == "model.backbone" and err.value.fix == "use one of resnet50, resnet101"




@pytest.mark.parametrize("name, options", [("lraspp", {}), ("fcn", {}), ("deeplabv3", {"backbone": "resnet101"})])
def test_uncached_pretrained_weights_are_a_clear_error(hub_dir, name, options):
    with pytest.raises(CvtoolError, match=r"could not download pretrained weights .*COCO_WITH_VOC_LABELS_V1"):
        create_model(name, num_classes=K, weights="DEFAULT", **options)
    with pytest.raises(CvtoolError, match="could not download pretrained weights .*IMAGENET1K_V1"):
        create_model(name, num_classes=K, weights_backbone="IMAGENET1K_V1", **options)


def test_cached_pretrained_weights_load_and_get_new_score_convs(hub_dir):
    voc = create_model("lraspp", num_classes=21)  # same state-dict keys as torchvision's LRASPP
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(voc.state_dict(), hub_dir / "checkpoints" / "lraspp_mobilenet_v3_large-d234d4ea.pth")
    model = create_model("lraspp", num_classes=K, weights="LRASPP_MobileNet_V3_Large_Weights.DEFAULT")
    assert torch.equal(model.backbone["1"].block[0][0].weight, voc.backbone["1"].block[0][0].weight)
    assert torch.equal(model.classifier.cbr[0].weight, voc.classifier.cbr[0].weight)
    assert model.classifier.low_classifier.out_channels == model.classifier.high_classifier.out_channels == K
    assert eval_logits(model, torch.randn(1, 3, 17, 23)).shape == (1, K, 17, 23)


def test_pretrained_weights_can_drop_the_aux_head(hub_dir):
    voc = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(weights_backbone=None, aux_loss=True)
    assert create_model("deeplabv3", num_classes=21, backbone="mobilenet_v3_large").state_dict().keys() == \
        voc.state_dict().keys()  # cvtool's wrapper keeps torchvision's state-dict keys
    (hub_dir / "checkpoints").mkdir(parents=True)
    torch.save(voc.state_dict(), hub_dir / "checkpoints" / "deeplabv3_mobilenet_v3_large-fc3c493d.pth")
    model = create_model("deeplabv3", num_classes=K, backbone="mobilenet_v3_large", weights="DEFAULT", aux_loss=False)
    assert model.aux_classifier is None and model.classifier[4].out_channels == K
    assert torch.equal(model.classifier[0].convs[1][0].weight, voc.classifier[0].convs[1][0].weight)


def test_local_backbone_weights_load_a_classifier_file(tmp_path):
    classifier = create_model("mobilenet_v3_large", num_classes=10)
    torch.save(classifier.state_dict(), tmp_path / "mobilenet.pt")
    model = create_model("lraspp", num_classes=K, weights_backbone=str(tmp_path / "mobilenet.pt"))
    assert torch.equal(model.backbone["0"][0].weight, classifier.features[0][0].weight)
    assert torch.equal(model.backbone["16"][1].running_var, classifier.features[16][1].running_var)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("depth", [1, 3])
def test_unet_returns_input_size_logits_for_any_size(padding, depth):
    model = create_model("unet", num_classes=K, width=2, depth=depth, padding=padding)
    for size in [(37, 50), (5, 8), (1, 2)]:
        assert eval_logits(model, torch.randn(1, 3, *size)).shape == (1, K, *size)


def test_unet_valid_margin_is_the_papers_overlap_tile():
    assert valid_margin(4) == 184 and valid_tile(388, 4) == (572, 388) and valid_input_size(388) == 572
    assert valid_tile(389, 4) == (588, 404)  # outputs come in steps of 2**depth
    assert valid_tile(1, 1) == (18, 2)  # the smallest tile keeping every level at least 1 px


def test_unet_valid_mode_uses_unpadded_convs_on_the_mirror_padded_tile():
    model = create_model("unet", num_classes=K, width=1, depth=2, padding="valid")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 2 * (2 * 2 + 1) and all(c.padding == (0, 0) for c in convs)
    shapes = {}
    model.down[0].register_forward_hook(lambda m, i, o: shapes.__setitem__("in", i[0].shape[-2:]))
    model.head.register_forward_hook(lambda m, i, o: shapes.__setitem__("out", o.shape[-2:]))
    eval_logits(model, torch.randn(1, 3, 37, 20))
    assert shapes["in"] == (valid_tile(37, 2)[0], valid_tile(20, 2)[0])
    assert shapes["out"] == (valid_tile(37, 2)[1], valid_tile(20, 2)[1])


def test_unet_valid_mode_output_pixels_sit_on_their_input_pixels():
    torch.manual_seed(0)
    model = create_model("unet", num_classes=K, width=2, depth=2, padding="valid", batch_norm=False)
    image = torch.randn(1, 3, 96, 96)
    full = eval_logits(model, image)
    part = eval_logits(model, image[..., 16:80, 12:84])  # offsets on the pooling grid (multiples of 2**depth)
    inner = valid_margin(2) // 2  # farther in, the crop's logits see only real pixels
    inside, same_pixels = part[..., inner:-inner, inner:-inner], full[..., 16 + inner:80 - inner, 12 + inner:84 - inner]
    assert inside.shape[-2:] == (24, 32) and torch.allclose(inside, same_pixels, atol=1e-5)
    assert not torch.allclose(part[..., :inner, :inner], full[..., 16:16 + inner, 12:12 + inner], atol=1e-3)
    impulse = torch.zeros(1, 3, 96, 96)
    impulse[..., 48, 40] = 1.0
    changed = (eval_logits(model, impulse) - eval_logits(model, torch.zeros_like(impulse))).abs().sum((0, 1)) > 1e-6
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    assert abs((rows[0] + rows[-1]) / 2 - 48) <= 2 and abs((cols[0] + cols[-1]) / 2 - 40) <= 2  # centred


def test_mirror_pad_reflects_more_than_the_image_size():
    x = torch.arange(3.0).view(1, 1, 1, 3)
    assert mirror_pad(x.expand(1, 1, 2, 3), 5, 0, 0, 0)[0, 0, 0].tolist() == [1, 0, 1, 2, 1, 0, 1, 2]


@pytest.mark.parametrize("depth", [2, 3, 4])
def test_segnet_returns_input_size_logits_at_each_depth(depth):
    model = create_model("segnet", num_classes=K, width=2, depth=depth, convs_per_stage=1)
    assert eval_logits(model, torch.randn(1, 3, H, W)).shape == (1, K, H, W)
    assert eval_logits(model, torch.randn(1, 3, 3, 5)).shape == (1, K, 3, 5)


def test_segnet_decoder_unpools_with_the_encoders_indices():
    model = create_model("segnet", num_classes=K, width=2, depth=3, convs_per_stage=[2, 1, 3, 9])
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    unpools = [m for m in model.modules() if isinstance(m, nn.MaxUnpool2d)]
    assert len(pools) == len(unpools) == 3 and all(p.return_indices for p in pools)
    assert [len(s.convs) for s in model.encoder] == [2, 1, 3] and [len(s.convs) for s in model.decoder] == [3, 1, 2]
    pooled, fed = [], []
    for p in pools:
        p.register_forward_hook(lambda m, i, o: pooled.append(o[1]))
    for u in unpools:
        u.register_forward_hook(lambda m, i, o: fed.append(i[1]))
    eval_logits(model, torch.randn(1, 3, 40, 24))
    assert all(torch.equal(a, b) for a, b in zip(pooled, reversed(fed)))


def test_segnet_unpools_in_deterministic_mode_too():
    model = create_model("segnet", num_classes=K, width=2, depth=2, convs_per_stage=1)
    x = torch.randn(2, 3, 13, 18)
    torch.manual_seed(0)  # the same random target twice
    expected = train_step(model, x)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)  # nn.MaxUnpool2d's own kernel raises here
    try:
        torch.manual_seed(0)
        assert torch.allclose(train_step(model, x), expected, atol=1e-6)
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
    assert all(torch.allclose(p.grad, g, atol=1e-6) for p, g in zip(model.parameters(), grads))


def test_segnet_options_are_checked():
    with pytest.raises(CvtoolError, match="depth must be 2..5"):
        create_model("segnet", num_classes=K, depth=6)
    with pytest.raises(CvtoolError, match="each of its 5 stages"):
        create_model("segnet", num_classes=K, convs_per_stage=[2, 2])


def test_dilated_front_end_has_output_stride_8_and_dilations_2_and_4():
    model = create_model("dilated", num_classes=K, **TINY["dilated"])
    scores = eval_logits(model.front_end, torch.randn(1, 3, H, W))
    assert scores.shape == (1, K, H // 8, W // 8)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.front_end) == 3
    dilations = [m.dilation[0] for m in model.front_end if isinstance(m, nn.Conv2d)]
    assert dilations == [1] * 10 + [2, 2, 2, 4, 1, 1]


def test_dilated_context_module_starts_as_the_identity_on_truncated_scores():
    model = create_model("dilated", num_classes=K, **TINY["dilated"])
    convs = [m for m in model.context if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1, 1, 2, 4, 8, 16, 1, 1] and convs[-1].kernel_size == (1, 1)
    scores = torch.randn(2, K, 9, 11)
    assert torch.allclose(eval_logits(model.context, scores), scores.clamp(min=0), atol=1e-6)
    wide = create_model("dilated", num_classes=K, context_width_mult=2, **TINY["dilated"])
    assert [c.out_channels for c in wide.context if isinstance(c, nn.Conv2d)] == [2 * K] * 7 + [K]
    assert torch.allclose(eval_logits(wide.context, scores), scores.clamp(min=0), atol=0.05)
    plain = create_model("dilated", num_classes=K, context=False, **TINY["dilated"])
    assert isinstance(plain.context, nn.Identity)


@pytest.mark.parametrize("variant, skips", [("8s", {"score_pool3", "score_pool4"}), ("16s", {"score_pool4"}),
                                            ("32s", set())])
def test_fcn8s_variants_fuse_their_skips(variant, skips):
    model = create_model("fcn8s", num_classes=K, variant=variant, **TINY["fcn8s"])
    assert {n for n, _ in model.named_children() if n.startswith("score_pool")} == skips
    assert model.upscore.stride == (model.stride, model.stride)
    assert eval_logits(model, torch.randn(1, 3, H, W)).shape == (1, K, H, W)
    with pytest.raises(CvtoolError, match="variant must be one of 32s, 16s, 8s"):
        create_model("fcn8s", num_classes=K, variant="4s")


def test_fcn8s_upsampling_starts_bilinear():
    up = upsampler(2, 8)
    ramp = torch.arange(4.0).view(1, 1, 1, 4).expand(1, 2, 4, 4)
    with torch.no_grad():
        out = up(ramp)
    assert out.shape == (1, 2, 32, 32)
    expected = nn.functional.interpolate(ramp, scale_factor=8, mode="bilinear", align_corners=False)
    assert torch.allclose(out[..., 4:-4, 4:-4], expected[..., 4:-4, 4:-4], atol=1e-5)


@pytest.mark.parametrize("name", OURS)
def test_named_weights_on_our_models_are_an_error(name):
    with pytest.raises(CvtoolError, match=f"{name} has no pretrained weights named 'DEFAULT'"):
        create_model(name, num_classes=K, weights="DEFAULT")


def test_local_weights_file_round_trips(tmp_path):
    source = create_model("fcn8s", num_classes=K, **TINY["fcn8s"])
    torch.save({"model": source.state_dict()}, tmp_path / "fcn8s.pt")
    model = create_model("fcn8s", num_classes=K, weights=str(tmp_path / "fcn8s.pt"), **TINY["fcn8s"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())


@pytest.mark.parametrize("name", SEGMENTERS)
def test_unknown_option_is_an_error(name):
    with pytest.raises(CvtoolError, match=f"model {name} has no option 'widht'"):
        create_model(name, num_classes=K, widht=2)


def test_segmentation_models_are_registered_with_configs_repeating_their_defaults():
    """On VOC (the published sizes) every model config resolves to its builder's defaults."""
    from omegaconf import OmegaConf

    from cvtool.config import runner

    assert list_models(task="segmentation") == SEGMENTERS
    for name in SEGMENTERS:
        cfg = runner.compose("train", ["task=segmentation", "dataset=voc_seg", f"model={name}"])
        conf = OmegaConf.to_container(cfg.model, resolve=True)
        assert conf.pop("name") == name and conf.pop("weights") is None and conf.pop("freeze") is None
        conf = {k: v for k, v in conf.items() if k not in NOT_BUILDER_ARGS}  # e.g. amp_on_cpu (the engine reads it)
        defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in builder_kwargs(name).items()}
        assert conf == defaults, name


@pytest.mark.parametrize("name", OURS)
def test_min_size_is_the_smallest_input_that_works(name):
    model = create_model(name, num_classes=K, **TINY[name])
    size = model_info(name).min_size

    forward_at(model, size)
    if size > 1:
        with pytest.raises(RuntimeError):
            forward_at(model, size - 1)
