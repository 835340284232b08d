"""Any registered classifier as a convolutional trunk: cut at its deepest feature map of output stride <= a limit.

The cut is found on the model's torch.fx graph (torchvision.models.feature_extraction), not from a per-model table:
two dummy inputs 64 px apart give every node's output stride (64 / the growth of its side), and the cut is the last
node, before the class scores, that is an articulation point of the graph (no earlier tensor is still needed after
it: a stage end, not a branch inside an Inception block or a residual unit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from cvtool.errors import CvtoolError
from cvtool.models.registry import create_model, list_models, model_info

PROBE_GROWTH = 64  # the two probe inputs differ by this many pixels: strides up to 64 are measured exactly
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


@dataclass(frozen=True)
class FeatureMap:
    node: str  # the node's name in torchvision's feature-extraction naming
    stride: int
    channels: int
    conv: str | None  # the last module before it holding a convolution, with a spatial output (Grad-CAM's layer)


class FeatureTrunk(nn.Module):
    """A classifier's graph up to one node: (B, C, H, W) images -> (B, out_channels, H / stride, W / stride)."""

    def __init__(self, body: nn.Module, cut: FeatureMap):
        super().__init__()
        self.body = body  # a torchvision DualGraphModule (train and eval graphs) holding only the layers it uses
        self.stride, self.out_channels = cut.stride, cut.channels
        self.explained_layer = f"body.{cut.conv}" if cut.conv else None

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)["features"]


def feature_trunk(name: str, in_channels: int, options: Mapping[str, object] | None, stride: int
                  ) -> tuple[FeatureTrunk, int]:
    """(trunk, out_channels): registered classifier `name` (built with `options`, e.g. small_input or
    weights=DEFAULT) cut at its deepest feature map of output stride <= `stride`; `trunk.stride` is that map's."""
    info = model_info(name)
    if info.task != "classification":
        raise CvtoolError(f"{name} is a {info.task} model, not a classifier", where="model.backbone",
                          fix=f"use a classifier: {', '.join(list_models(task='classification'))}")
    model = create_model(name, num_classes=1, in_channels=in_channels, **dict(options or {}))
    maps = feature_maps(model, in_channels, info.min_size)
    usable = [m for m in maps if m.stride <= stride]
    if not usable:
        strides = sorted({m.stride for m in maps})
        raise CvtoolError(f"{name} has no feature map of output stride <= {stride}", where="model.stride",
                          fix=f"use a stride {name} has: {', '.join(map(str, strides))}" if strides else
                          "use a convolutional classifier")
    cut = usable[-1]
    body = create_feature_extractor(model, return_nodes={cut.node: "features"}, suppress_diff_warning=True)
    return FeatureTrunk(body, cut), cut.channels


def feature_maps(model: nn.Module, in_channels: int, min_size: int = 1) -> list[FeatureMap]:
    """`model`'s candidate cuts in graph order: nodes whose output is a feature map that grows with the input,
    that no earlier tensor outlives, up to the class scores (the first map of one channel: num_classes=1) and
    leaving out dropout."""
    try:
        _, names = get_graph_node_names(model, suppress_diff_warning=True)
        probe = create_feature_extractor(model.eval(), return_nodes=names, suppress_diff_warning=True)
    except Exception as err:  # torch.fx cannot trace data-dependent control flow
        raise CvtoolError(f"cannot trace {type(model).__name__} with torch.fx: {err}", where="model.backbone",
                          fix="use another classifier as backbone") from err
    side = max(128, 32 * math.ceil(min_size / 32))
    with torch.no_grad():
        small, large = (probe(torch.zeros(1, in_channels, s, s)) for s in (side, side + PROBE_GROWTH))
    graph = probe.graph
    node_names = {node: name for name, node in next(n for n in graph.nodes if n.op == "output").args[0].items()}
    cuts, found, conv = set(_articulation_points(graph)), [], None
    for node in graph.nodes:
        name = node_names.get(node)
        a, b = small.get(name), large.get(name)
        if not (isinstance(a, Tensor) and a.dim() == 4 and b.shape[-1] > a.shape[-1] and b.shape[-2] > a.shape[-2]):
            continue
        if a.shape[1] == 1:  # the class-score map (SqueezeNet's 1x1 classifier conv): the features end before it
            break
        module = probe.get_submodule(node.target) if node.op == "call_module" else None
        conv = node.target if module is not None and any(isinstance(m, nn.Conv2d) for m in module.modules()) else conv
        if node in cuts and not isinstance(module, _DROPOUT):
            found.append(FeatureMap(name, round(PROBE_GROWTH / (b.shape[-1] - a.shape[-1])), int(a.shape[1]), conv))
    model.train()
    return found


def _articulation_points(graph: fx.Graph) -> list[fx.Node]:
    """Nodes after which no earlier value is used any more (constants aside), in graph order."""
    nodes = [n for n in graph.nodes if n.op != "output"]
    index = {node: i for i, node in enumerate(nodes)}
    points, live_until = [], -1
    for i, node in enumerate(nodes):
        if live_until <= i and node.op not in ("placeholder", "get_attr"):
            points.append(node)
        if node.op != "get_attr":
            live_until = max([live_until] + [index[user] for user in node.users if user in index])
    return points


def group_norm(module: nn.Module, groups: int = 32) -> nn.Module:
    """Every BatchNorm2d of `module` replaced in place by GroupNorm (gcd(groups, channels) groups, so that any width
    divides): batch statistics do not work with the few images per step of a detector trained from scratch."""
    for parent in list(module.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.BatchNorm2d):
                channels = child.num_features
                setattr(parent, child_name, nn.GroupNorm(math.gcd(groups, channels), channels))
    return module
