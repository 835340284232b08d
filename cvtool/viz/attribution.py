"""Attribution maps of a classifier for normalised image batches, one H x W map per image (higher = more
important for the target class). Captum implements the gradient methods, Grad-CAM and occlusion; what it lacks
(first-layer filters, activations) lives in `viz/features.py`.

Every method takes (model, images B x C x H x W, targets B) and returns (maps B x H x W, raw B x C x H x W or
None): `raw` is the signed per-channel attribution where the method has one (guided backprop, deconvnet).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvtool.errors import CvtoolError


@dataclass
class Options:
    """`visualize.*` config values the methods read."""

    layer: str | None = None  # Grad-CAM layer (module name); None = the last convolution
    samples: int = 25  # SmoothGrad noisy copies / integrated-gradients steps
    noise: float = 0.15  # SmoothGrad noise std as a fraction of the input's value range
    patch: float = 0.1  # occlusion window side: px, or a fraction (< 1) of the image's shorter side
    stride: float = 0.03  # occlusion grid step, likewise
    batch: int = 64  # occluded images per forward pass


def without_inplace(model: nn.Module) -> nn.Module:
    """A copy whose ReLUs are out of place: backward hooks on in-place ReLUs fail (guided backprop, deconvnet)."""
    model = copy.deepcopy(model)
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return model


def last_conv(model: nn.Module) -> str:
    """The name of the last Conv2d in registration order (Grad-CAM's default layer); a detector's: its
    backbone's last. Auxiliary heads (`aux*`, run in training only) are not candidates."""
    scope = "backbone." if hasattr(model, "backbone") else ""
    names = [name for name, module in model.named_modules()
             if isinstance(module, nn.Conv2d) and name.startswith(scope)
             and not any(part.startswith("aux") for part in name.split("."))]
    if not names:
        raise CvtoolError(f"{type(model).__name__} has no convolution", where="visualize.layer",
                          fix="name a layer with visualize.layer=...")
    return names[-1]


BLOCK_TAIL = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU,
              nn.GELU, nn.Hardswish, nn.ELU)


def last_conv_block(model: nn.Module) -> str:
    """Grad-CAM's default layer: the output of the last convolution's block, i.e. its rectified feature maps as
    in Selvaraju et al. (a plain stack: the norm/activation layers right after the conv; a residual block such
    as ResNet's Bottleneck: the block itself), not the raw conv output, whose sign a following BatchNorm can
    flip."""
    name = last_conv(model)
    modules = dict(model.named_modules())
    parent_name, _, child = name.rpartition(".")
    parent = modules[parent_name]
    if not isinstance(parent, nn.Sequential):  # a block module (or the model itself, or a list of convs)
        plain = not parent_name or isinstance(parent, nn.ModuleList | nn.ModuleDict)
        return name if plain else parent_name
    children = list(parent.named_children())
    index = [n for n, _ in children].index(child)
    for sibling, module in children[index + 1:]:
        if not isinstance(module, BLOCK_TAIL):
            break
        child = sibling
    return f"{parent_name}.{child}" if parent_name else child


def module_named(model: nn.Module, name: str | int) -> nn.Module:
    """The submodule called `name` (an int from the command line, e.g. visualize.layer=10, is its string)."""
    name = str(name)
    modules = dict(model.named_modules())
    if name not in modules:
        close = [n for n in modules if name in n][:5]
        raise CvtoolError(f"the model has no layer '{name}'", where="visualize.layer",
                          fix=f"one of {close}" if close else "run `cvtool inspect` to list the layer names")
    return modules[name]


def _channel_max(attribution: Tensor) -> Tensor:
    """Simonyan et al.'s map: the maximum of |attribution| over the colour channels."""
    return attribution.detach().abs().amax(dim=1)


def saliency(model, images, targets, opts: Options) -> tuple[Tensor, None]:
    from captum.attr import Saliency

    return _channel_max(Saliency(model).attribute(images, target=targets, abs=True)), None


def smoothgrad(model, images, targets, opts: Options) -> tuple[Tensor, None]:
    from captum.attr import NoiseTunnel, Saliency

    spread = float(images.detach().amax() - images.detach().amin()) * opts.noise
    maps = NoiseTunnel(Saliency(model)).attribute(images, nt_type="smoothgrad", nt_samples=opts.samples,
                                                  nt_samples_batch_size=opts.batch, stdevs=spread, target=targets)
    return _channel_max(maps), None


def integrated_gradients(model, images, targets, opts: Options) -> tuple[Tensor, None]:
    from captum.attr import IntegratedGradients

    maps = IntegratedGradients(model).attribute(images, baselines=torch.zeros_like(images), target=targets,
                                                n_steps=opts.samples, internal_batch_size=opts.batch)
    return _channel_max(maps), None


def guided_backprop(model, images, targets, opts: Options) -> tuple[Tensor, Tensor]:
    from captum.attr import GuidedBackprop

    raw = GuidedBackprop(without_inplace(model)).attribute(images, target=targets).detach()
    return _channel_max(raw), raw


def deconvnet(model, images, targets, opts: Options) -> tuple[Tensor, Tensor]:
    from captum.attr import Deconvolution

    raw = Deconvolution(without_inplace(model)).attribute(images, target=targets).detach()
    return _channel_max(raw), raw


def explained_layer(model: nn.Module, opts: Options) -> nn.Module:
    """opts.layer (default: the network's `explained_layer` where it names one, else the last conv block) of the
    explained network; a wrapper's (RegionScores, BoxScores, JointScores) is its model's."""
    explained = model.model if isinstance(model, (RegionScores, BoxScores, JointScores)) else model
    return module_named(explained, opts.layer or getattr(explained, "explained_layer", None)
                        or last_conv_block(explained))


def gradcam(model, images, targets, opts: Options) -> tuple[Tensor, None]:
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(model, explained_layer(model, opts)).attribute(images, target=targets, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam.detach(), tuple(images.shape[-2:]), interpolate_mode="bilinear")
    return cam[:, 0], None


def guided_gradcam(model, images, targets, opts: Options) -> tuple[Tensor, Tensor]:
    from captum.attr import GuidedGradCam

    plain = without_inplace(model)
    raw = GuidedGradCam(plain, explained_layer(plain, opts)).attribute(images, target=targets).detach()
    return _channel_max(raw), raw


def _pixels(value: float, h: int, w: int) -> int:
    """A window size or step: pixels when >= 1, else a fraction of the shorter image side."""
    return max(1, round(value if value >= 1 else value * min(h, w)))


def probabilities(model: nn.Module, images: Tensor) -> Tensor:
    """Class probabilities: the softmax of a classifier's logits; a detector's box scores as they are."""
    scores = model(images).float()
    return scores if isinstance(model, BoxScores) else F.softmax(scores, dim=1)


def occlusion(model, images, targets, opts: Options) -> tuple[Tensor, None]:
    """Zeiler & Fergus: the drop of the target's probability when a grey patch (the dataset mean, 0 after
    normalisation) is centred on each position of a grid of step `opts.stride`; every pixel takes the value of
    the nearest centre. (Captum's Occlusion averages the drops of all windows covering a pixel instead, which
    blurs the map by the patch size: on the shapes classifier its maxima fall off the object more often, pointing
    game 0.66 vs 0.75 at patch 8 / stride 4.)"""
    b, _, h, w = images.shape
    patch, stride = _pixels(opts.patch, h, w), _pixels(opts.stride, h, w)
    centres = [(cy, cx) for cy in range(0, h, stride) for cx in range(0, w, stride)]
    maps = []
    with torch.no_grad():
        base = probabilities(model, images)[torch.arange(b), targets]
        for image, target, p0 in zip(images, targets, base):
            drops = []
            for first in range(0, len(centres), opts.batch):
                chunk = centres[first:first + opts.batch]
                occluded = image.repeat(len(chunk), 1, 1, 1)
                for k, (cy, cx) in enumerate(chunk):
                    top, left = max(cy - patch // 2, 0), max(cx - patch // 2, 0)
                    occluded[k, :, top:cy - patch // 2 + patch, left:cx - patch // 2 + patch] = 0
                drops.append(p0 - probabilities(model, occluded)[:, target])
            grid = torch.cat(drops).view(len(range(0, h, stride)), len(range(0, w, stride)))
            rows = (torch.arange(h, device=grid.device) / stride).round().long().clamp(max=grid.shape[0] - 1)
            cols = (torch.arange(w, device=grid.device) / stride).round().long().clamp(max=grid.shape[1] - 1)
            maps.append(grid[rows][:, cols])
    return torch.stack(maps), None


class RegionScores(nn.Module):
    """A segmenter seen as a classifier: per class, its logit averaged over a fixed pixel region (B x H x W
    booleans), so classifier attributions explain "class c over this region" (Grad-CAM for segmentation)."""

    def __init__(self, model: nn.Module, region: Tensor):
        super().__init__()
        self.model, self.region = model, region.float()

    def forward(self, x: Tensor) -> Tensor:
        output = self.model(x)
        logits = output["out"] if isinstance(output, dict) else output
        weights = self.region[:, None] / self.region.sum(dim=(1, 2)).clamp_min(1)[:, None, None, None]
        return (logits * weights).sum(dim=(2, 3))


class BoxScores(nn.Module):
    """A detector seen as a classifier of one chosen box (B x 4, x1 y1 x2 y2, in one class per image): per image,
    the highest score among its detections of that class overlapping the box by IoU >= `iou`, in that class's
    column (zeros elsewhere; 0 when the box is no longer detected), so attributions explain "this box"
    (torchvision-style detectors in eval mode). A batch of one box explains every image against that box (the
    occluded copies of one image). Its outputs are probabilities already (occlusion reads them without a
    softmax)."""

    def __init__(self, model: nn.Module, num_classes: int, offset: int, boxes: Tensor, labels: Tensor,
                 iou: float = 0.5):
        super().__init__()
        self.model, self.num_classes, self.offset, self.iou = model, num_classes, offset, iou
        self.boxes, self.labels = boxes, labels

    def forward(self, x: Tensor) -> Tensor:
        from torchvision.ops import box_iou

        rows = []
        for i, detections in enumerate(self.model(list(x))):
            j = i if len(self.boxes) > 1 else 0
            label = int(self.labels[j])
            same = (detections["labels"] - self.offset == label) & (
                box_iou(detections["boxes"].detach(), self.boxes[j:j + 1])[:, 0] >= self.iou)
            score = detections["scores"][same].max() if bool(same.any()) else x.new_zeros(())
            rows.append(x.new_zeros(self.num_classes).index_put((torch.tensor([label], device=x.device),),
                                                                score.reshape(1)))
        return torch.stack(rows)


class JointScores(nn.Module):
    """A heatmap pose network seen as a classifier of its joints: per joint, the peak of its heatmap (B x K), so
    attributions explain "where the network finds this joint"."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).amax(dim=(2, 3))


class FrameScores(nn.Module):
    """A sequence model (CRNN: B x T x K scores) seen as a classifier at one output frame (B x K), so attributions
    explain which input columns made that frame emit a character."""

    def __init__(self, model: nn.Module, frame: int):
        super().__init__()
        self.model, self.frame = model, frame

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)[:, self.frame]


METHODS: dict[str, Callable] = {
    "saliency": saliency, "smoothgrad": smoothgrad, "integrated_gradients": integrated_gradients,
    "guided_backprop": guided_backprop, "deconvnet": deconvnet, "gradcam": gradcam,
    "guided_gradcam": guided_gradcam, "occlusion": occlusion,
}


def attribute(method: str, model: nn.Module, images: Tensor, targets: Tensor, opts: Options):
    """(maps B x H x W, raw or None) of `method` for `targets`; the model is used in eval mode."""
    model.eval()
    images = images.detach().float().requires_grad_(method not in ("occlusion",))
    with warnings.catch_warnings():  # captum announces the ReLU hooks it sets (and removes) on every call
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", category=UserWarning)
        return METHODS[method](model, images, targets, opts)
