"""Adversarial examples (Szegedy et al. 2014; Goodfellow et al. 2015) with Captum's FGSM and PGD, in pixel
space: images in [0, 1], the perturbation bounded by epsilon per pixel (L-infinity), results clipped to [0, 1]."""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ATTACKS = ("fgsm", "pgd")


class PixelSpace(nn.Module):
    """The classifier fed [0, 1] images: (x - mean) / std inside, so attacks bound pixels, not normalised values."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def perturb(model: PixelSpace, images: Tensor, targets: Tensor, epsilon: float, attack: str = "fgsm",
            steps: int = 10) -> Tensor:
    """Untargeted adversarial versions of `images` ([0, 1]) against the true `targets`; epsilon in pixel units
    (e.g. 8/255). PGD takes `steps` steps of 2.5 epsilon / steps from the clean image."""
    from captum.robust import FGSM, PGD

    if epsilon == 0:
        return images.clone()
    model.eval()
    images = images.detach().requires_grad_()
    bounds = {"loss_func": cross_entropy, "lower_bound": 0.0, "upper_bound": 1.0}
    with warnings.catch_warnings():  # PGD's inner FGSM steps get fresh tensors; Captum says so every step
        warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require", category=UserWarning)
        if attack == "fgsm":
            return FGSM(model, **bounds).perturb(images, epsilon, targets).detach()
        return PGD(model, **bounds).perturb(images, radius=epsilon, step_size=2.5 * epsilon / steps,
                                            step_num=steps, target=targets).detach()


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """The loss the attacks ascend (Captum's default, -log of the raw output, assumes probabilities)."""
    return F.cross_entropy(logits, targets, reduction="none")


@torch.no_grad()
def predictions(model: nn.Module, images: Tensor, batch: int = 256) -> Tensor:
    return torch.cat([model(images[i:i + batch]).argmax(dim=1) for i in range(0, len(images), batch)])


def accuracy_curve(model: PixelSpace, images: Tensor, labels: Tensor, epsilons: list[float], attack: str,
                   steps: int, batch: int) -> list[float]:
    """Top-1 accuracy on the adversarial images for each epsilon (the first is usually 0: clean accuracy)."""
    curve = []
    for epsilon in epsilons:
        adversarial = torch.cat([perturb(model, images[i:i + batch], labels[i:i + batch], epsilon, attack, steps)
                                 for i in range(0, len(images), batch)])
        curve.append(float((predictions(model, adversarial) == labels).float().mean()))
    return curve
