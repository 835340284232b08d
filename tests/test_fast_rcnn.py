"""Fast R-CNN: classifier trunks cut at a stride, the paper's RoI sampling, proposals scaled with their image, the
external-proposal and RPN modes, eval outputs and a tiny overfit."""

from __future__ import annotations

import pytest
import torch

from cvtool.errors import CvtoolError
from cvtool.models import create_model
from cvtool.models.fast_rcnn import FastRCNN
from cvtool.models.feature_trunks import feature_trunk

SMALL = {"backbone": "shapes_cnn", "backbone_options": {"width": 8}, "head_width": 32, "min_size": 64,
         "max_size": 64}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def vgg11_trunk():
    return feature_trunk("vgg11", 3, {}, 16)  # (building VGG's 100M-parameter classifier takes a while)


def _model(**kwargs) -> FastRCNN:
    torch.manual_seed(0)
    return create_model("fast_rcnn", num_classes=3, **{**SMALL, **kwargs})


def _target(boxes: list[list[float]], labels: list[int]) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels).long()}


def _proposals(n: int, side: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * side * 0.7
    return torch.cat([xy, xy + 4 + torch.rand(n, 2, generator=gen) * side * 0.3], 1)


@pytest.mark.parametrize(("name", "stride", "channels", "measured"), [
    ("resnet18", 16, 256, 16), ("resnet18", 8, 128, 8), ("vgg11", 16, 512, 16), ("shapes_cnn", 16, 96, 8)])
def test_trunk_is_cut_at_the_deepest_map_within_the_stride(name, stride, channels, measured, vgg11_trunk):
    trunk, out_channels = vgg11_trunk if name == "vgg11" else feature_trunk(name, 3, {}, stride)
    assert (out_channels, trunk.stride) == (channels, measured)
    assert trunk(torch.zeros(1, 3, 64, 96)).shape == (1, channels, 64 // measured, 96 // measured)
    assert not any("fc" in n or "classifier" in n for n, _ in trunk.named_parameters())  # the head is cut away
    trunk.get_submodule(trunk.explained_layer)  # Grad-CAM's layer exists


def test_resnet_trunk_ends_with_layer3_and_vgg_trunk_before_the_last_pool(vgg11_trunk):
    resnet, _ = feature_trunk("resnet18", 3, {}, 16)
    assert {n.split(".")[1] for n, _ in resnet.named_parameters()} == {"conv1", "bn1", "layer1", "layer2", "layer3"}
    vgg, _ = vgg11_trunk
    assert vgg(torch.zeros(1, 3, 64, 64)).min() >= 0  # ends with the last ReLU (features.19), not max-pool 20
    assert "features.18" in dict(vgg.body.named_modules()) and "features.20" not in dict(vgg.body.named_modules())


def test_trunk_refuses_a_detector_and_a_stride_finer_than_the_stem():
    with pytest.raises(CvtoolError, match="not a classifier"):
        feature_trunk("yolo", 3, {}, 16)
    with pytest.raises(CvtoolError, match="stride <= 1") as err:
        feature_trunk("shapes_cnn", 3, {}, 1)
    assert "2, 4, 8" in err.value.fix


@pytest.mark.parametrize("roi_op", ["pool", "align"])
def test_training_step_gives_finite_losses_and_gradients_for_every_parameter(roi_op):
    model = _model(roi_op=roi_op).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [_target([[10, 12, 30, 40]], [1]), _target([[5, 5, 25, 20], [30, 30, 60, 60]], [2, 3])]
    losses = model(images, targets, proposals=[_proposals(50, 64), _proposals(50, 64, 1)])
    assert set(losses) == {"loss_classifier", "loss_box_reg"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())  # DDP: no unused parameters


def test_eval_returns_detections_inside_each_image():
    model = _model(box_score_thresh=0.0).eval()
    images = [torch.rand(3, 48, 64), torch.rand(3, 64, 40)]
    with torch.no_grad():
        out = model(images, proposals=[_proposals(30, 40), _proposals(30, 40, 1)])
    for detections, image in zip(out, images, strict=True):
        assert set(detections) == {"boxes", "scores", "labels"}
        boxes = detections["boxes"]
        assert len(boxes) > 0 and detections["labels"].dtype == torch.int64
        assert set(detections["labels"].tolist()) <= {1, 2, 3}  # label_offset 1: 0 is the background
        assert (boxes >= 0).all() and (boxes[:, 2] <= image.shape[2]).all() and (boxes[:, 3] <= image.shape[1]).all()
    assert model.label_offset == 1 and model.uses_proposals


def test_sampler_takes_foreground_from_iou_half_and_background_from_a_tenth():
    heads = _model(rois_per_image=512).roi_heads
    gt = [[0, 0, 10, 10]]  # area 100; each proposal below is inside it: IoU = its area / 100
    proposals = torch.tensor([[0, 0, 10, 0.5], [0, 0, 10, 3], [0, 0, 10, 6]])  # IoU 0.05, 0.3, 0.6
    boxes, _, labels, _ = heads.select_training_samples([proposals], [_target(gt, [2])])
    sampled = {tuple(b.tolist()): int(label) for b, label in zip(boxes[0], labels[0], strict=True)}
    assert sampled == {(0, 0, 10, 3): 0, (0, 0, 10, 6): 2, (0, 0, 10, 10): 2}  # + the ground truth, added


def test_sampler_keeps_a_quarter_foreground():
    heads = _model(rois_per_image=8).roi_heads
    foreground = torch.tensor([[0, 0, 10, 6 + i / 10] for i in range(8)])  # IoU 0.6 .. 0.67
    background = torch.tensor([[0, 0, 10, 2 + i / 10] for i in range(8)])  # IoU 0.2 .. 0.27
    _, _, labels, _ = heads.select_training_samples([torch.cat([foreground, background])],
                                                    [_target([[0, 0, 10, 10]], [1])])
    assert sorted(labels[0].tolist()) == [0] * 6 + [1] * 2  # 25 % of 8, the rest background


def test_proposals_are_scaled_with_the_resized_image_and_cut_to_the_first_n():
    model = _model(min_size=128, max_size=256, test_proposals=2).eval()  # 64 x 96 -> 128 x 192
    seen = []
    model.roi_heads.box_roi_pool.register_forward_pre_hook(lambda _, args: seen.append(args[1][0]))
    with torch.no_grad():
        model([torch.rand(3, 64, 96)], proposals=[torch.tensor([[4.0, 6, 20, 30], [10, 10, 90, 60], [0, 0, 5, 5]])])
    assert torch.equal(seen[0], torch.tensor([[8.0, 12, 40, 60], [20, 20, 180, 120]]))


def test_missing_proposals_are_a_user_error():
    model = _model().eval()
    with pytest.raises(CvtoolError, match="needs region proposals"):
        model([torch.rand(3, 64, 64)])
    with pytest.raises(CvtoolError, match="1 images but 2 images"):
        model([torch.rand(3, 64, 64)] * 2, proposals=[_proposals(5, 64)])


def test_rpn_mode_is_faster_rcnn_with_the_same_head():
    model = _model(proposals="rpn", train_proposals=50, anchor_sizes=[16, 32]).train()
    assert not model.uses_proposals
    assert type(model.roi_heads.box_head) is type(_model().roi_heads.box_head)
    losses = model([torch.rand(3, 64, 64)], [_target([[10, 12, 30, 40]], [1])])
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_a_few_steps_on_two_images_lower_the_loss():
    model = _model(rois_per_image=32).train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [_target([[10, 12, 30, 40]], [1]), _target([[30, 30, 60, 60]], [3])]
    proposals = [_proposals(60, 64), _proposals(60, 64, 1)]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    totals = []
    for _ in range(15):
        loss = sum(model(images, targets, proposals=proposals).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert sum(totals[-3:]) / 3 < 0.5 * sum(totals[:3]) / 3


@pytest.mark.parametrize("proposals", ["selective_search", "rpn"])
def test_losses_and_boxes_stay_fp32_under_bf16_autocast(proposals):
    model = _model(proposals=proposals).train()
    given = {"proposals": [_proposals(30, 64)]} if proposals != "rpn" else {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model([torch.rand(3, 64, 64)], [_target([[10, 12, 30, 40]], [1])], **given)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.eval()([torch.rand(3, 64, 64)], **given)
    assert out[0]["boxes"].dtype == torch.float32
