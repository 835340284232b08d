"""An exported file behind the eager model's interface, so `predict`/`eval` reuse the task adapters unchanged: a
batch -> logits (classifiers, segmenters) or heatmaps (the pose network), a list of [0, 1] images -> per-image
detection dicts (detectors, with keypoints for Keypoint R-CNN)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvtool.errors import CvtoolError

from .formats import Runner, load_runner
from .graphs import FIXED_SIZE_KINDS, NORMALISED_KINDS


def sidecar_path(model_file: str | Path) -> Path:
    return Path(model_file).with_suffix(".json")


def read_sidecar(model_file: str | Path) -> dict:
    """The JSON written beside an exported file (classes, pre/postprocessing, the config it was trained with)."""
    if not Path(model_file).is_file():
        raise CvtoolError("exported model file not found", where=str(model_file),
                          fix="check model_file= (written by `cvtool export ckpt=...`)")
    path = sidecar_path(model_file)
    if not path.is_file():
        raise CvtoolError("the exported model's sidecar JSON is missing", where=str(path),
                          fix="keep the .json that `cvtool export` writes next to the model file")
    try:
        sidecar = json.loads(path.read_text())
        sidecar["graph"]["kind"], sidecar["class_names"], sidecar["task"]  # noqa: B018 - the keys runtime needs
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CvtoolError(f"malformed sidecar JSON ({exc})", where=str(path),
                          fix="export the model again with `cvtool export ckpt=...`") from exc
    return sidecar


class ExportedModel(nn.Module):
    """Runs an exported file like the eager model it came from (full precision, whatever autocast is active)."""

    def __init__(self, runner: Runner, sidecar: dict, path: Path):
        super().__init__()
        self.runner, self.path = runner, path
        graph = sidecar["graph"]
        self.kind, self.outputs = graph["kind"], graph["outputs"]
        self.label_offset = sidecar.get("label_offset", 0)
        self.input_shape = graph["input_shape"]  # ints where the shape is fixed, axis names where it is free
        self.static_shape = None if graph["dynamic"] else self.input_shape
        self.select = sidecar.get("postprocess", {}).get("select")

    def _run(self, image: Tensor) -> list[Tensor]:
        fixed = self.input_shape[-3:]
        if any(isinstance(want, int) and want != got for want, got in zip(fixed, image.shape[-3:])):
            shape = "x".join(str(d) for d in fixed)
            raise CvtoolError(f"this model takes {shape} inputs (C x H x W as exported), got "
                              f"{'x'.join(str(d) for d in image.shape[-3:])}", where=str(self.path),
                              fix="export again with dynamic=true or input_size= of your images, or give images "
                                  "of that size")
        return self.runner(image)

    def _batched(self, images: Tensor) -> list[Tensor]:
        """Whole batches, or image by image where the export fixed the batch size."""
        if self.static_shape is None or images.shape[0] == self.static_shape[0]:
            return self._run(images)
        parts = [self._run(images[i:i + 1]) for i in range(images.shape[0])]
        return [torch.cat(outs) for outs in zip(*parts)]

    def forward(self, images):
        if self.kind in FIXED_SIZE_KINDS and list(images.shape[-2:]) != self.input_shape[-2:]:
            # the sidecar's preprocessing: classifiers and embedders take their exported size only
            images = F.interpolate(images.float(), self.input_shape[-2:], mode="bilinear", antialias=True)
        if self.kind in NORMALISED_KINDS:
            return self._batched(images)[0]
        if self.kind == "detector":
            return [dict(zip(self.outputs, self._run(image))) for image in images]
        from cvtool.exporting.graphs import select_dense

        # dense_detector: the graph's dense predictions (one call for same-size images), then NMS or greedy merging
        same_size = len({tuple(image.shape) for image in images}) == 1
        groups = [torch.stack(list(images))] if same_size else [image[None] for image in images]
        dense = [(b, s) for group in groups for b, s in zip(*self._batched(group))]
        return [select_dense(boxes, scores, tuple(image.shape[-2:]), **self.select)
                for image, (boxes, scores) in zip(images, dense)]


def load_exported(model_file: str | Path, device: torch.device) -> tuple[ExportedModel, dict]:
    """(the runnable model, its sidecar) for `model_file`."""
    path = Path(model_file)
    sidecar = read_sidecar(path)
    return ExportedModel(load_runner(path, device), sidecar, path), sidecar
