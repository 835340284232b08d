"""torchvision's ImageNet classifiers behind one generic builder: class count, input channels, small inputs.

GoogLeNet and Inception-v3 are built with ``aux_logits=False`` unless asked; with ``aux_logits=True`` their
forward in train mode returns a namedtuple (``GoogLeNetOutputs`` / ``InceptionOutputs``) holding the main and
the auxiliary logits, as torchvision does; Inception-v3's auxiliary head needs inputs of at least 299 px.
``transform_input=False``: inputs are expected normalised as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torchvision.models as tvm
from torch import nn

from cvtool.models.registry import register_model
from cvtool.models.weights import ensure_cached, resolve_weights


@dataclass(frozen=True)
class Family:
    """How to adapt one torchvision family: its head modules and the builder kwargs cvtool exposes."""

    heads: tuple[str, ...]  # dotted paths of the layers producing class scores, the main head first
    kwargs: dict[str, object] = field(default_factory=dict)  # exposed torchvision kwargs and their defaults
    small_input: bool = False  # ResNet-style stem (conv1 + maxpool) that a CIFAR stem can replace
    aux: tuple[str, ...] = ()  # auxiliary classifiers, dropped unless aux_logits=True
    scratch: dict[str, object] = field(default_factory=dict)  # fixed kwargs when training from scratch


_DROPOUT = {"dropout": 0.5}
ALEXNET = Family(("classifier.6",), _DROPOUT)
VGG = Family(("classifier.6",), _DROPOUT)
# init_weights=True: torchvision's truncated-normal init (and no FutureWarning about its default changing)
GOOGLENET = Family(
    ("fc", "aux1.fc2", "aux2.fc2"),
    {"aux_logits": False, "transform_input": False, "dropout": 0.2, "dropout_aux": 0.7},
    aux=("aux1", "aux2"),
    scratch={"init_weights": True},
)
INCEPTION = Family(
    ("fc", "AuxLogits.fc"),
    {"aux_logits": False, "transform_input": False, "dropout": 0.5},
    aux=("AuxLogits",),
    scratch={"init_weights": True},
)
RESNET = Family(("fc",), {"zero_init_residual": False}, small_input=True)
DENSENET = Family(("classifier",), {"drop_rate": 0.0, "memory_efficient": False})
MOBILENET_V2 = Family(("classifier.1",), {"width_mult": 1.0, "dropout": 0.2})
MOBILENET_V3 = Family(("classifier.3",), {"dropout": 0.2})
SQUEEZENET = Family(("classifier.1",), _DROPOUT)
SHUFFLENET = Family(("fc",))
EFFICIENTNET = Family(("classifier.1",), {"dropout": 0.2, "stochastic_depth_prob": 0.2})

# name -> (family, min_size, description). min_size was found by trial: the smallest square side for which a
# train-mode forward with batch 2 and an eval-mode one with batch 1 both work (pinned by a slow test).
CLASSIFIERS: dict[str, tuple[Family, int, str]] = {
    "alexnet": (ALEXNET, 63, "AlexNet (Krizhevsky et al. 2012)"),
    "vgg11": (VGG, 32, "VGG-11 (Simonyan & Zisserman 2014)"),
    "vgg11_bn": (VGG, 32, "VGG-11 with BatchNorm"),
    "vgg13": (VGG, 32, "VGG-13 (Simonyan & Zisserman 2014)"),
    "vgg13_bn": (VGG, 32, "VGG-13 with BatchNorm"),
    "vgg16": (VGG, 32, "VGG-16 (Simonyan & Zisserman 2014)"),
    "vgg16_bn": (VGG, 32, "VGG-16 with BatchNorm"),
    "vgg19": (VGG, 32, "VGG-19 (Simonyan & Zisserman 2014)"),
    "vgg19_bn": (VGG, 32, "VGG-19 with BatchNorm"),
    "googlenet": (GOOGLENET, 15, "GoogLeNet / Inception-v1 (Szegedy et al. 2014)"),
    "inception_v3": (INCEPTION, 75, "Inception-v3 (Szegedy et al. 2015)"),
    "resnet18": (RESNET, 1, "ResNet-18 (He et al. 2015)"),
    "resnet34": (RESNET, 1, "ResNet-34 (He et al. 2015)"),
    "resnet50": (RESNET, 1, "ResNet-50 (He et al. 2015)"),
    "resnet101": (RESNET, 1, "ResNet-101 (He et al. 2015)"),
    "resnet152": (RESNET, 1, "ResNet-152 (He et al. 2015)"),
    "resnext50_32x4d": (RESNET, 1, "ResNeXt-50 32x4d (Xie et al. 2016)"),
    "resnext101_32x8d": (RESNET, 1, "ResNeXt-101 32x8d (Xie et al. 2016)"),
    "wide_resnet50_2": (RESNET, 1, "Wide ResNet-50-2 (Zagoruyko & Komodakis 2016)"),
    "wide_resnet101_2": (RESNET, 1, "Wide ResNet-101-2 (Zagoruyko & Komodakis 2016)"),
    "densenet121": (DENSENET, 29, "DenseNet-121 (Huang et al. 2016)"),
    "densenet169": (DENSENET, 29, "DenseNet-169 (Huang et al. 2016)"),
    "mobilenet_v2": (MOBILENET_V2, 1, "MobileNetV2 (Sandler et al. 2018)"),
    "mobilenet_v3_small": (MOBILENET_V3, 1, "MobileNetV3-Small (Howard et al. 2019)"),
    "mobilenet_v3_large": (MOBILENET_V3, 1, "MobileNetV3-Large (Howard et al. 2019)"),
    "squeezenet1_0": (SQUEEZENET, 21, "SqueezeNet 1.0 (Iandola et al. 2016)"),
    "squeezenet1_1": (SQUEEZENET, 17, "SqueezeNet 1.1 (Iandola et al. 2016)"),
    "shufflenet_v2_x1_0": (SHUFFLENET, 1, "ShuffleNetV2 1.0x (Ma et al. 2018)"),
    "efficientnet_b0": (EFFICIENTNET, 1, "EfficientNet-B0 (Tan & Le 2019)"),
}


def set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    """Replace the submodule at dotted ``path`` (``classifier.6``) by ``module``."""
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def first_conv_path(model: nn.Module) -> str:
    """Dotted path of the first ``Conv2d``: the stem of every classifier here."""
    return next(name for name, m in model.named_modules() if isinstance(m, nn.Conv2d))


def conv_like(conv: nn.Conv2d, in_channels: int | None = None, out_channels: int | None = None) -> nn.Conv2d:
    """A fresh ``Conv2d`` with ``conv``'s hyper-parameters, optionally other channel counts."""
    return nn.Conv2d(
        conv.in_channels if in_channels is None else in_channels,
        conv.out_channels if out_channels is None else out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )


def replace_first_conv(model: nn.Module, in_channels: int, pretrained: bool) -> None:
    """Make the stem take ``in_channels``; pretrained RGB kernels become their mean tiled and rescaled.

    Scaling the mean by 3/in_channels keeps the response to a grey image (equal channels) unchanged, so for
    one channel this is the sum of the RGB kernels.
    """
    path = first_conv_path(model)
    old = model.get_submodule(path)
    if old.in_channels == in_channels:
        return
    new = conv_like(old, in_channels=in_channels)
    if pretrained:
        with torch.no_grad():
            mean = old.weight.mean(dim=1, keepdim=True)
            new.weight.copy_(mean.repeat(1, in_channels, 1, 1) * (old.in_channels / in_channels))
            if old.bias is not None:
                new.bias.copy_(old.bias)
    set_submodule(model, path, new)


def use_small_input_stem(model: nn.Module) -> None:
    """CIFAR-style ResNet stem: 3x3 stride-1 ``conv1``, no max-pool; 32 px inputs then end at 4x4, not 1x1.

    The new ``conv1`` is freshly initialised: a pretrained 7x7 stem does not fit it.
    """
    old = model.conv1
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


def replace_heads(model: nn.Module, paths: tuple[str, ...], num_classes: int) -> None:
    """Give every present head layer ``num_classes`` outputs (a fresh Linear, or 1x1 conv for SqueezeNet)."""
    for path in paths:
        try:
            old = model.get_submodule(path)
        except AttributeError:  # an auxiliary head that was dropped (aux_logits=False)
            continue
        if isinstance(old, nn.Linear):
            set_submodule(model, path, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
        else:
            set_submodule(model, path, conv_like(old, out_channels=num_classes))
    if hasattr(model, "num_classes"):  # SqueezeNet keeps it
        model.num_classes = num_classes


def drop_aux_heads(model: nn.Module, paths: tuple[str, ...]) -> None:
    """Remove GoogLeNet/Inception auxiliary classifiers, as torchvision does for aux_logits=False."""
    if paths:
        model.aux_logits = False
        for path in paths:
            set_submodule(model, path, None)


def build_torchvision(
    name: str,
    num_classes: int,
    in_channels: int = 3,
    weights: str | None = None,
    small_input: bool = False,
    **kwargs: object,
) -> nn.Module:
    """Build torchvision's ``name``; pretrained weights (an enum name) are loaded, then the heads replaced."""
    family = CLASSIFIERS[name][0]
    tv_builder = tvm.get_model_builder(name)
    options = {**family.kwargs, **kwargs}
    if weights is None:
        model = tv_builder(num_classes=num_classes, **family.scratch, **options)
    else:
        enum = resolve_weights(name, weights)
        ensure_cached(enum)
        # torchvision refuses aux_logits=False with GoogLeNet/Inception weights; drop the heads after loading
        drop_aux = options.get("aux_logits") is False
        if drop_aux:
            del options["aux_logits"]
        model = tv_builder(weights=enum, progress=False, **options)
        if drop_aux:
            drop_aux_heads(model, family.aux)
        replace_heads(model, family.heads, num_classes)
    replace_first_conv(model, in_channels, pretrained=weights is not None)
    if small_input:
        use_small_input_stem(model)
    return model


def _make_builder(name: str, family: Family) -> Callable[..., nn.Module]:
    def builder(
        num_classes: int, in_channels: int = 3, weights: str | None = None, **kwargs: object
    ) -> nn.Module:
        return build_torchvision(name, num_classes, in_channels, weights, **kwargs)

    # The signature lists the exposed kwargs so that create_model can reject unknown ones by name.
    exposed = {**family.kwargs, **({"small_input": False} if family.small_input else {})}
    params = [p for p in inspect.signature(builder).parameters.values() if p.kind is not p.VAR_KEYWORD]
    params += [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=v) for k, v in exposed.items()]
    builder.__signature__ = inspect.Signature(params, return_annotation=nn.Module)
    builder.__name__ = builder.__qualname__ = name
    builder.__doc__ = f"{CLASSIFIERS[name][2]}, torchvision builder."
    return builder


for _name, (_family, _min_size, _description) in CLASSIFIERS.items():
    register_model(_name, task="classification", min_size=_min_size, description=_description)(
        _make_builder(_name, _family)
    )
