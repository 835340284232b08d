"""LeNet-5 (LeCun et al. 1998): the classic 32x32 digit recogniser, layer for layer."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cvtool.errors import CvtoolError
from cvtool.models.registry import register_model
from cvtool.models.weights import reject_weights_name

_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


@register_model("lenet5", task="classification", min_size=32, description="LeNet-5 (LeCun et al. 1998)")
def lenet5(
    num_classes: int, in_channels: int = 3, weights: str | None = None, activation: str = "tanh"
) -> nn.Sequential:
    """C1-S2-C3-S4-C5-F6-output; C3 is fully connected to S2 and the pools are plain averages.

    An adaptive average pool before C5 (the identity at 32 px) lets larger inputs through.
    """
    reject_weights_name("lenet5", weights)
    if activation not in _ACTIVATIONS:
        choices = ", ".join(_ACTIVATIONS)
        raise CvtoolError(f"unknown LeNet-5 activation {activation!r}", fix=f"use one of {choices}")
    act = _ACTIVATIONS[activation]
    return nn.Sequential(
        OrderedDict(
            c1=nn.Conv2d(in_channels, 6, 5),
            act1=act(),
            s2=nn.AvgPool2d(2, 2),
            c3=nn.Conv2d(6, 16, 5),
            act3=act(),
            s4=nn.AvgPool2d(2, 2),
            fit=nn.AdaptiveAvgPool2d((5, 5)),
            c5=nn.Conv2d(16, 120, 5),
            act5=act(),
            flatten=nn.Flatten(),
            f6=nn.Linear(120, 84),
            act6=act(),
            output=nn.Linear(84, num_classes),
        )
    )
