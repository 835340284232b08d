"""Keypoint models: the stacked-hourglass heatmap network (shapes, intermediate supervision, sizing) and Keypoint
R-CNN (losses, outputs, head sized by the dataset config, fine-tuning heads), and their exports verified against
eager PyTorch and run behind the eager interface."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from cvtool.config import runner
from cvtool.errors import CvtoolError
from cvtool.exporting.formats import load_runner, write
from cvtool.exporting.graphs import export_graph
from cvtool.exporting.runtime import ExportedModel
from cvtool.exporting.verify import as_detections, dense_check, detection_check
from cvtool.models import create_model, list_models, model_info
from cvtool.models.torchvision_detectors import DETECTORS, _replace_heads

K = 14
TINY_RCNN = {"num_keypoints": K, "keypoint_head_channels": 32, "keypoint_head_layers": 2, "min_size": 64,
             "max_size": 96, "anchor_sizes": [16, 32, 64, 128], "fpn_channels": 64, "returned_layers": [2, 3, 4],
             "rpn_post_nms_top_n_test": 20, "box_detections_per_img": 10, "box_score_thresh": 0.0}


def head_convs(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.roi_heads.keypoint_head.modules() if isinstance(m, nn.Conv2d)]


def figures(generator: torch.Generator, count: int = 2, side: int = 96) -> dict:
    """`count` person boxes with K labelled keypoints inside each."""
    corner = torch.rand(count, 2, generator=generator) * side / 2
    size = side / 4 + torch.rand(count, 2, generator=generator) * side / 4
    points = corner[:, None] + torch.rand(count, K, 2, generator=generator) * size[:, None]
    return {"boxes": torch.cat([corner, corner + size], 1), "labels": torch.ones(count, dtype=torch.int64),
            "keypoints": torch.cat([points, torch.full((count, K, 1), 2.0)], 2)}


@pytest.fixture(scope="module")
def rcnn() -> nn.Module:
    torch.manual_seed(0)
    return create_model("keypoint_rcnn", num_classes=1, **TINY_RCNN)


def test_keypoint_models_are_registered_under_task_keypoints():
    assert list_models(task="keypoints") == ["keypoint_rcnn", "pose_heatmap"]
    assert model_info("faster_rcnn").task == "detection"


def test_pose_heatmap_gives_stride_4_heatmaps_of_every_stack_in_training_and_the_last_in_eval():
    model = create_model("pose_heatmap", num_classes=1, num_keypoints=K, stacks=3, depth=3, channels=16)
    crops = torch.randn(2, 3, 128, 96).contiguous(memory_format=torch.channels_last)
    stages = model.train()(crops)
    assert isinstance(stages, list) and len(stages) == 3 and all(s.shape == (2, K, 32, 24) for s in stages)
    sum(s.square().mean() for s in stages).backward()  # every stack's loss reaches the stem
    assert model.stem[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        last = model.eval()(crops)
        assert last.shape == (2, K, 32, 24)
        assert model(torch.randn(1, 3, 100, 72)).shape == (1, K, 25, 18)  # sides not divisible by 4 * 2**depth


def test_pose_heatmap_refuses_crops_smaller_than_its_depth_needs():
    with pytest.raises(CvtoolError, match=r"depth 5 needs crops of at least 128 px a side, got 128x96"):
        create_model("pose_heatmap", num_classes=1, num_keypoints=K, depth=5, input_size=[128, 96])
    with pytest.raises(CvtoolError, match="stacks must be an integer >= 1"):
        create_model("pose_heatmap", num_classes=1, num_keypoints=K, stacks=0)


def test_keypoint_rcnn_trains_on_a_keypoint_loss_and_predicts_k_keypoints_per_detection(rcnn):
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 96, generator=generator) for _ in range(2)]
    losses = rcnn.train()(images, [figures(generator) for _ in images])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_keypoint"}
    sum(losses.values()).backward()
    assert head_convs(rcnn)[0].weight.grad.abs().sum() > 0
    with torch.no_grad():
        out = rcnn.eval()(images)[0]
    n = len(out["boxes"])
    assert n > 0 and out["keypoints"].shape == (n, K, 3) and out["keypoints_scores"].shape == (n, K)
    assert rcnn.label_offset == 1 and set(out["labels"].tolist()) == {1}


def test_keypoint_rcnn_head_is_sized_by_the_dataset_config():
    cfg = runner.compose("train", ["task=keypoints", "model=keypoint_rcnn"])  # stick figures: a CPU-sized head
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    model = create_model("keypoint_rcnn", num_classes=1,
                         **{k: v for k, v in model_cfg.items() if k not in ("name", "weights", "freeze")})
    assert [(c.in_channels, c.out_channels) for c in head_convs(model)] == [(128, 128)] * 4  # over a 128-wide FPN
    assert model.roi_heads.keypoint_predictor.kps_score_lowres.in_channels == 128
    assert model.roi_heads.keypoint_predictor.out_channels == K
    assert model.roi_heads.keypoint_roi_pool.sampling_ratio == 1
    coco = runner.compose("train", ["task=keypoints", "model=keypoint_rcnn", "dataset=coco_keypoints",
                                    "dataset.root=/data/coco"]).model  # the published head for COCO
    assert (coco.keypoint_head_channels, coco.keypoint_head_layers, coco.num_keypoints) == (512, 8, 17)


def test_keypoint_rcnn_options_are_checked():
    with pytest.raises(CvtoolError, match="COCO weights hold the published keypoint head"):
        create_model("keypoint_rcnn", num_classes=1, weights="DEFAULT", keypoint_head_channels=128)
    with pytest.raises(CvtoolError, match="num_keypoints is for keypoint_rcnn, not faster_rcnn"):
        create_model("faster_rcnn", num_classes=1, num_keypoints=K)
    with pytest.raises(CvtoolError, match="keypoint_head_layers must be an integer >= 1"):
        create_model("keypoint_rcnn", num_classes=1, keypoint_head_layers=0)


def test_fine_tuning_replaces_the_predictors_only_where_the_counts_differ(rcnn):
    heads = rcnn.roi_heads
    box, keypoint = heads.box_predictor, heads.keypoint_predictor
    _replace_heads(rcnn, DETECTORS["keypoint_rcnn"], num_classes=1, num_keypoints=K)  # same counts: kept
    assert heads.box_predictor is box and heads.keypoint_predictor is keypoint
    _replace_heads(rcnn, DETECTORS["keypoint_rcnn"], num_classes=2, num_keypoints=5)
    assert heads.box_predictor.cls_score.out_features == 3 and heads.keypoint_predictor.out_channels == 5
    assert heads.keypoint_predictor.kps_score_lowres.in_channels == 32
    heads.box_predictor, heads.keypoint_predictor = box, keypoint


def exported(graph, path) -> ExportedModel:
    """The written file behind the eager interface, as predict/eval load it (sidecar as `cvtool export` writes)."""
    shape = [graph.free_axes.get(i, "?") for i in range(4 if graph.batched else 3)]
    sidecar = {"graph": {"kind": graph.kind, "outputs": graph.outputs, "input_shape": shape, "dynamic": True},
               "label_offset": 1}
    return ExportedModel(load_runner(path, torch.device("cpu")), sidecar, path)


def test_keypoint_rcnn_exports_to_torchscript_with_its_keypoints_verified(rcnn, tmp_path):
    graph = export_graph(rcnn, "keypoints")
    assert graph.outputs == ["boxes", "scores", "labels", "keypoints", "keypoints_scores"]
    image = torch.rand(3, 96, 80, generator=torch.Generator().manual_seed(1))
    written = write(graph, image, "torchscript", tmp_path / "kp.pt", opset=18, dynamic=True)
    model = exported(graph, written.path)
    with torch.no_grad():
        eager, = rcnn.eval()([image])
        ours, = model([image])
    assert set(ours) == set(graph.outputs) and len(eager["boxes"]) > 0
    check = detection_check("3x96x80", eager, ours, 0.0, 0.05, 1e-3, keypoint_atol=0.05)
    assert check.passed and "max keypoint diff" in check.detail, check.detail
    moved = {**ours, "keypoints": ours["keypoints"] + torch.tensor([0.5, 0.0, 0.0])}  # every x off by half a px
    assert not detection_check("3x96x80", eager, moved, 0.0, 0.05, 1e-3, keypoint_atol=0.05).passed


def test_pose_heatmap_exports_to_onnx_with_free_batch_and_size(tmp_path):
    net = create_model("pose_heatmap", num_classes=1, num_keypoints=K, stacks=2, depth=2, channels=16).eval()
    graph = export_graph(net, "keypoints")
    assert (graph.kind, graph.outputs) == ("heatmap", ["heatmaps"])
    written = write(graph, torch.randn(2, 3, 64, 48), "onnx", tmp_path / "pose.onnx", opset=17, dynamic=True)
    model = exported(graph, written.path)
    for crops in (torch.randn(1, 3, 64, 48), torch.randn(3, 3, 80, 64)):
        with torch.no_grad():
            eager = net(crops)
        heatmaps = model(crops)
        assert heatmaps.shape == (len(crops), K, crops.shape[2] // 4, crops.shape[3] // 4)
        assert dense_check("crops", [eager], [heatmaps], 1e-4, 1e-4).passed
    assert as_detections([heatmaps], graph.outputs)["heatmaps"] is heatmaps
