"""What the image tasks share: normalising uint8 batches on the device, and building a registry model."""

from __future__ import annotations

import torch

from cvtool.engine.hardware import Hardware
from cvtool.models import create_model

NOT_BUILDER_ARGS = ("name", "weights", "amp_on_cpu", "native_size")  # model config keys that are not builder arguments


class Normaliser:
    """(uint8 images - mean) / std with the dataset's statistics (given for [0, 1] images), cached per device."""

    def __init__(self, mean: list[float], std: list[float]):
        self.mean, self.std = mean, std
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, images: torch.Tensor, hardware: Hardware) -> torch.Tensor:
        device = hardware.device
        if device not in self._cache:
            self._cache[device] = (torch.tensor(self.mean, device=device).view(1, -1, 1, 1) * 255,
                                   torch.tensor(self.std, device=device).view(1, -1, 1, 1) * 255)
        mean, std = self._cache[device]
        images = (images.to(device, non_blocking=True).float() - mean) / std
        return images.contiguous(memory_format=torch.channels_last) if hardware.channels_last else images


def registry_model(model_cfg: dict, dataset_cfg: dict, num_classes: int) -> torch.nn.Module:
    """`model.name` from the registry, with the dataset's channels and image size and the model's options."""
    kwargs = {k: v for k, v in model_cfg.items() if k not in NOT_BUILDER_ARGS}
    return create_model(model_cfg["name"], num_classes=num_classes, in_channels=dataset_cfg["channels"],
                        weights=model_cfg.get("weights"), input_size=dataset_cfg["image_size"], **kwargs)
