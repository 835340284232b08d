"""Per-layer summary of a model from one probe forward pass: output shape, parameters, multiply-adds and the
receptive field (size and stride on the input) of each layer's output.

Multiply-adds come from torch's own FlopCounterMode (FLOPs / 2). Receptive fields are propagated tensor by
tensor through every torch call: convolutions and pools grow them as in the lectures (K' = K + (K-1)(D-1);
r_out = r_in + (K'-1) j_in, j_out = j_in S), upsampling divides the stride, flattening a feature map widens the
field to the whole map, and any other op takes the largest field of its inputs (skips, branches, concatenation).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

Pair = tuple[float, float]


@dataclass
class Layer:
    name: str
    kind: str  # the module's class name
    shape: tuple[int, ...] | None  # output shape (first output tensor) of the first call
    params: int  # parameters of this module and its children
    macs: int  # multiply-adds of all its calls
    rf: Pair | None = None  # receptive field (h, w) in input pixels; None where it cannot be traced (e.g. RoIAlign)
    stride: Pair | None = None  # distance (h, w) on the input between neighbouring outputs
    calls: int = 1


@dataclass
class Summary:
    layers: list[Layer]
    params: int
    macs: int
    input_size: tuple[int, int]
    by_kind: dict[str, int] = field(default_factory=dict)  # multiply-adds per operator


def _pair(value) -> Pair:
    if isinstance(value, (tuple, list)):
        return (float(value[0]), float(value[-1]))
    return (float(value), float(value))


def _tensors(obj) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in _tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _tensors(item)]
    return _tensors(obj.tensors) if isinstance(getattr(obj, "tensors", None), Tensor) else []  # ImageList


def _arg(args: tuple, kwargs: dict, index: int, name: str, default=None):
    if name in kwargs and kwargs[name] is not None:
        return kwargs[name]
    return args[index] if len(args) > index and args[index] is not None else default


def _grow(rf: Pair, jump: Pair, kernel: Pair, stride: Pair, dilation: Pair = (1.0, 1.0)) -> tuple[Pair, Pair]:
    """Receptive field and stride after a window op (convolution or pooling)."""
    effective = tuple(k + (k - 1) * (d - 1) for k, d in zip(kernel, dilation))
    return (tuple(r + (k - 1) * j for r, k, j in zip(rf, effective, jump)),
            tuple(j * s for j, s in zip(jump, stride)))


class ReceptiveFields(TorchFunctionMode):
    """Tags every tensor computed from the seeded input with its (receptive field, stride) pair."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[int, tuple[weakref.ref, Pair, Pair]] = {}

    def tag(self, tensor: Tensor, rf: Pair, jump: Pair) -> None:
        self.fields[id(tensor)] = (weakref.ref(tensor), rf, jump)

    def of(self, tensor: Tensor) -> tuple[Pair, Pair] | None:
        entry = self.fields.get(id(tensor))
        return entry[1:] if entry is not None and entry[0]() is tensor else None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        known = [(t, f) for t in _tensors(args) + _tensors(kwargs) if (f := self.of(t)) is not None]
        if known:
            result = self._rule(getattr(func, "__name__", ""), args, kwargs, known, out)
            for tensor in _tensors(out):
                self.tag(tensor, *result)
        return out

    @staticmethod
    def _rule(name: str, args: tuple, kwargs: dict, known: list, out) -> tuple[Pair, Pair]:
        source, (rf, jump) = known[0]
        name = name.lstrip("_")
        if name in ("conv2d", "max_pool2d", "avg_pool2d", "lp_pool2d", "max_pool2d_with_indices"):
            if name == "conv2d":
                kernel, stride, dilation = (args[1].shape[-2:], _arg(args, kwargs, 3, "stride", 1),
                                            _arg(args, kwargs, 5, "dilation", 1))
            else:
                kernel = _arg(args, kwargs, 1, "kernel_size")
                stride = _arg(args, kwargs, 2, "stride", kernel) or kernel
                dilation = _arg(args, kwargs, 4, "dilation", 1) if "max" in name else 1
            return _grow(rf, jump, _pair(kernel), _pair(stride), _pair(dilation))
        out_tensors = _tensors(out)
        if not out_tensors:
            return rf, jump
        result = out_tensors[0]
        if name.startswith("adaptive_") and source.dim() >= 3 and result.dim() >= 3:
            size_in, size_out = source.shape[-2:], result.shape[-2:]
            kernel = tuple(math.ceil(n / o) for n, o in zip(size_in, size_out))
            stride = tuple(n // o for n, o in zip(size_in, size_out))
            return _grow(rf, jump, _pair(kernel), _pair(stride))
        if name in ("conv_transpose2d", "interpolate", "upsample", "max_unpool2d", "pixel_shuffle") and \
                source.dim() == 4 and result.dim() == 4:
            scale = tuple(n / o for n, o in zip(source.shape[-2:], result.shape[-2:]))
            jump = tuple(j * s for j, s in zip(jump, scale))
            if name == "conv_transpose2d":  # the kernel spans (K-1) output steps
                dilation = _pair(_arg(args, kwargs, 7, "dilation", 1))
                rf = tuple(r + (k + (k - 1) * (d - 1) - 1) * j
                           for r, k, d, j in zip(rf, args[1].shape[-2:], dilation, jump))
            return rf, jump
        if name in ("flatten", "view", "reshape", "mean", "amax", "sum") and source.dim() == 4 \
                and result.dim() < 4:  # the whole feature map in one vector (VGG's fc6, global pooling)
            return _grow(rf, jump, _pair(tuple(source.shape[-2:])), _pair(tuple(source.shape[-2:])))
        fields = [f for _, f in known]
        return (tuple(max(f[0][i] for f in fields) for i in range(2)),
                tuple(max(f[1][i] for f in fields) for i in range(2)))


def _shape(output) -> tuple[int, ...] | None:
    tensors = _tensors(output)
    return tuple(tensors[0].shape) if tensors else None


def summarize(model: nn.Module, inputs, depth: int | None = None) -> Summary:
    """Run `model(inputs)` once (eval mode, no grad) and summarise it. `inputs`: a batch tensor, or a list of
    image tensors (torchvision detectors). `depth`: rows are the modules at this nesting depth (and shallower
    leaves); None = every leaf layer."""
    names = {module: name for name, module in model.named_modules() if name}

    def wanted(name: str, module: nn.Module) -> bool:
        level = name.count(".") + 1
        leaf = not any(True for _ in module.children())
        return level == depth or (leaf and (depth is None or level < depth))

    rows: dict[str, Layer] = {}
    fields = ReceptiveFields()

    def record(module: nn.Module, _inputs, output) -> None:
        name = names.get(module)
        if name is None or not wanted(name, module):
            return
        if name in rows:
            rows[name].calls += 1
            return
        traced = [f for t in _tensors(output) if (f := fields.of(t)) is not None]
        rf, jump = traced[0] if traced else (None, None)
        rows[name] = Layer(name, type(module).__name__, _shape(output),
                           sum(p.numel() for p in module.parameters()), 0, rf, jump)

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    probe = inputs if isinstance(inputs, Tensor) else list(inputs)
    for tensor in _tensors(probe):
        fields.tag(tensor, (1.0, 1.0), (1.0, 1.0))
    counter = FlopCounterMode(display=False, depth=None)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), counter, fields:
            model(probe)
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    counts = counter.get_flop_counts()
    prefix = next((name for name in counts if name != "Global" and "." not in name), type(model).__name__)
    for name, row in rows.items():
        row.macs = sum(counts.get(f"{prefix}.{name}", {}).values()) // 2
    total = counts.get("Global", {})
    size = tuple(_tensors(probe)[0].shape[-2:])
    return Summary(list(rows.values()), sum(p.numel() for p in model.parameters()), sum(total.values()) // 2,
                   size, {str(op).split(".")[-1]: n // 2 for op, n in total.items()})
