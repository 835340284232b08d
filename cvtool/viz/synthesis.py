"""Images made by gradient ascent on the input: class models (Simonyan et al. 2013, with Yosinski et al. 2015's
regularisers) and DeepDream (Mordvintsev et al. 2015). Both work in normalised input space and return [0, 1]
images (de-normalised with the dataset's mean and std)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms.v2.functional import gaussian_blur


@dataclass
class Ascent:
    steps: int = 200
    lr: float = 0.1  # step size of the normalised-gradient ascent
    l2: float = 1e-3  # L2 decay of the image (class models)
    jitter: int = 4  # random shift (px) before each step
    blur_every: int = 4  # Gaussian blur every N steps (class models; 0 = never)
    blur_sigma: float = 0.5
    octaves: int = 3  # DeepDream: image scales, each `octave_scale` times the previous
    octave_scale: float = 1.4


def _jittered(x: Tensor, jitter: int, generator: torch.Generator) -> tuple[Tensor, tuple[int, int]]:
    if jitter == 0:
        return x, (0, 0)
    dy, dx = (int(v) for v in torch.randint(-jitter, jitter + 1, (2,), generator=generator))
    return torch.roll(x, (dy, dx), dims=(-2, -1)), (dy, dx)


def _step(x: Tensor, objective: Tensor, lr: float) -> None:
    (grad,) = torch.autograd.grad(objective, x)
    with torch.no_grad():
        x += lr * grad / grad.abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)


def class_model(model: nn.Module, classes: list[int], shape: tuple[int, int, int], opts: Ascent,
                seed: int = 0) -> Tensor:
    """One image per class maximising its score S_c(x) - l2 * ||x||^2 from a zero (mean-grey) image, with jitter
    and periodic blur; returns normalised images B x C x H x W."""
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    x = torch.zeros(len(classes), *shape, device=device, requires_grad=True)
    target = torch.as_tensor(classes, device=device)
    model.eval()
    for step in range(opts.steps):
        shifted, _ = _jittered(x, opts.jitter, generator)
        scores = model(shifted).gather(1, target[:, None]).sum()
        _step(x, scores - opts.l2 * x.pow(2).sum(), opts.lr)
        if opts.blur_every and (step + 1) % opts.blur_every == 0:
            with torch.no_grad():
                x.copy_(gaussian_blur(x, [3, 3], [opts.blur_sigma, opts.blur_sigma]))
    return x.detach()


def deepdream(model: nn.Module, layer: nn.Module, image: Tensor, opts: Ascent, seed: int = 0) -> Tensor:
    """Amplify `layer`'s activations (ascend their mean square) on a normalised image 1 x C x H x W, from the
    smallest octave up, carrying the detail added at each scale to the next."""
    generator = torch.Generator().manual_seed(seed)
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    size = image.shape[-2:]
    sizes = [tuple(max(8, round(s / opts.octave_scale ** k)) for s in size) for k in range(opts.octaves)][::-1]
    detail = torch.zeros_like(F.interpolate(image, sizes[0], mode="bilinear", align_corners=False))
    model.eval()
    try:
        for octave_size in sizes:
            base = F.interpolate(image, octave_size, mode="bilinear", align_corners=False)
            detail = F.interpolate(detail, octave_size, mode="bilinear", align_corners=False)
            x = (base + detail).requires_grad_(True)
            for _ in range(max(1, opts.steps // opts.octaves)):
                shifted, (dy, dx) = _jittered(x, opts.jitter, generator)
                captured.clear()
                model(shifted)
                _step(x, captured[0].pow(2).mean(), opts.lr)
            detail = (x.detach() - base)
    finally:
        handle.remove()
    return x.detach() if sizes[-1] == tuple(size) else F.interpolate(x.detach(), size, mode="bilinear")
