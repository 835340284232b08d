"""What gets exported for each kind of model: a module with tensor inputs and outputs, its names and free axes.

- classifiers: a batch of normalised images -> logits (the batch is free; the size is the training size);
- embedding networks (task embedding): a batch of normalised images -> embeddings (as classifiers: the batch is
  free, the size is the training size);
- segmenters: a batch of normalised images of any size -> logits (in eval mode both give only the main logits);
- CRNN (task text): a batch of normalised word crops of the training height and any width -> per-frame scores
  (CTC decoding runs after the graph); the dictionary classifier exports as a classifier;
- our pose network (task keypoints): a batch of normalised person crops of any size -> heatmaps (the last stack's);
- torchvision detectors: ONE [0, 1] image of any size -> boxes, scores, labels (+ masks, or keypoints and their
  scores for Keypoint R-CNN); the model resizes and normalises inside, as in eager mode. Their data-dependent
  shapes need TorchScript or the TorchScript-based ONNX exporter;
- our YOLO and OverFeat: a batch of [0, 1] images -> every prediction's boxes and confidences; thresholding and
  NMS (`yolo.select_detections`) or greedy merging (OverFeat's) run after the graph, so the graph has fixed shapes
  and exports to every format.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cvtool.errors import CvtoolError

ALL_EXPORTERS = ("dynamo", "legacy")  # torch.onnx paths, in the order tried: torch.export-based, TorchScript-based
# graphs of normalised batches (the rest take [0, 1] pixels)
NORMALISED_KINDS = ("classifier", "segmenter", "heatmap", "embedder", "recognizer")
FIXED_SIZE_KINDS = ("classifier", "embedder")  # graphs that take their training size only (the preprocessing resizes)


class MainLogits(nn.Module):
    """GoogLeNet/Inception's logits: scripted, they return (logits, aux logits...) even in eval mode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self.model(image)[0]
        return self.model(image)


class SingleImageDetector(nn.Module):
    """A torchvision detector on one image: (3, H, W) in [0, 1] -> its detections' `outputs` tensors (boxes, scores,
    labels, + masks or keypoints, keypoints_scores)."""

    def __init__(self, model: nn.Module, outputs: list[str]):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, image: Tensor) -> list[Tensor]:
        if torch.jit.is_scripting():  # scripted torchvision detectors return (losses, detections)
            detections = self.model([image])[1][0]
        else:
            detections = self.model([image])[0]
        return [detections[name] for name in self.outputs]


class DenseDetections(nn.Module):
    """Our YOLO's predictions before NMS: (N, 3, H, W) in [0, 1] -> (N, P, 4) boxes, (N, P, C) confidences."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.dense_detections(image)


def dense_selection(model: nn.Module) -> dict:
    """How a dense detector's outputs become detections (recorded in the sidecar): OverFeat's greedy merge, else
    YOLO's thresholds and NMS."""
    if hasattr(model, "merge_settings"):
        return {"method": "greedy_merge", **model.merge_settings()}
    return {"method": "nms", "score_thresh": model.score_thresh, "nms_thresh": model.nms_thresh,
            "detections_per_img": model.detections_per_img}


def select_dense(boxes: Tensor, scores: Tensor, image_hw, method: str = "nms", **settings) -> dict[str, Tensor]:
    """One image's detections from its dense (P, 4) boxes and (P, C) confidences as `dense_selection` recorded
    (sidecars without a method are YOLO's)."""
    if method == "greedy_merge":
        from cvtool.models.overfeat import merge_detections

        return merge_detections(boxes, scores, image_hw, **settings)
    from cvtool.models.yolo import select_detections

    return select_detections(boxes, scores, image_hw, **settings)


@dataclass
class Graph:
    """The exported module and its interface (recorded in the sidecar JSON)."""

    module: nn.Module
    kind: str  # classifier | embedder | segmenter | heatmap | detector | dense_detector
    outputs: list[str]
    free_axes: dict[int, str]  # the input's dynamic axes (with dynamic=true)
    output_axes: dict[str, dict[int, str]] = field(default_factory=dict)
    onnx_exporters: tuple[str, ...] = ALL_EXPORTERS
    batched: bool = True  # False: the input is one image (3, H, W)
    note: str = ""  # why an exporter path is skipped

    @property
    def input_name(self) -> str:
        return "image"


def export_graph(model: nn.Module, task: str, with_masks: bool = False) -> Graph:
    """The exportable form of a trained `model` of `task` (in eval mode, on the CPU)."""
    model = model.eval()  # eval mode: classifiers and segmenters return their main logits (no auxiliary heads)
    if task in ("classification", "segmentation"):
        from torchvision.models import GoogLeNet, Inception3

        module = MainLogits(model).eval() if isinstance(model, (GoogLeNet, Inception3)) else model
        if task == "classification":
            return Graph(module, "classifier", ["logits"], {0: "batch"}, {"logits": {0: "batch"}})
        axes = {0: "batch", 2: "height", 3: "width"}
        return Graph(module, "segmenter", ["logits"], axes, {"logits": axes})
    if task == "embedding":
        return Graph(model, "embedder", ["embedding"], {0: "batch"}, {"embedding": {0: "batch"}})
    if task == "text":  # CRNN: per-frame scores of word crops of any width; the dictionary model is a classifier
        if not hasattr(model, "frame_stride"):
            return Graph(model, "classifier", ["logits"], {0: "batch"}, {"logits": {0: "batch"}})
        return Graph(model, "recognizer", ["logits"], {0: "batch", 3: "width"}, {"logits": {0: "batch", 1: "frames"}})
    if task == "keypoints" and not hasattr(model, "roi_heads"):  # our pose network (Keypoint R-CNN has RoI heads)
        axes = {0: "batch", 2: "height", 3: "width"}
        return Graph(model, "heatmap", ["heatmaps"], axes, {"heatmaps": axes})
    if hasattr(model, "uses_proposals"):  # fast_rcnn (any proposals, rpn too: TorchScript cannot script it), rcnn
        raise CvtoolError(f"{type(model).__name__} does not export: external region proposals are no graph input "
                          "and its per-image RoI loops do not trace", where="cvtool export",
                          fix="run it from its checkpoint (ckpt=); of the R-CNN lineage, overfeat exports")
    if hasattr(model, "dense_detections"):
        axes = {"boxes": {0: "batch", 1: "predictions"}, "scores": {0: "batch", 1: "predictions"}}
        return Graph(DenseDetections(model).eval(), "dense_detector", ["boxes", "scores"],
                     {0: "batch", 2: "height", 3: "width"}, axes)
    outputs = ["boxes", "scores", "labels", *(["masks"] if with_masks else []),
               *(["keypoints", "keypoints_scores"] if task == "keypoints" else [])]
    return Graph(SingleImageDetector(model, outputs).eval(), "detector", outputs, {1: "height", 2: "width"},
                 {name: {0: "detections"} for name in outputs}, onnx_exporters=("legacy",), batched=False,
                 note="torchvision's detectors have data-dependent shapes (proposals, NMS) that torch.export "
                      "cannot capture")
