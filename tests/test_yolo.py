"""The YOLOv2-style detector: losses, eval outputs, box coding, dimension clusters, checkpoints, a tiny overfit."""

from __future__ import annotations

import numpy as np
import torch
from conftest import assert_detections_inside
from torchvision.ops import box_iou

from cvtool.models.yolo import YOLOv2, decode_boxes, encode_boxes, kmeans_anchors


def _target(boxes: list[list[float]], labels: list[int]) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels).long()}


def test_train_losses_are_finite_and_backpropagate():
    torch.manual_seed(0)
    model = YOLOv2(3, width=8).train()
    images = [torch.rand(3, 128, 128), torch.rand(3, 128, 128)]
    targets = [_target([[10, 20, 50, 60], [70, 70, 120, 110], [71, 70, 121, 110]], [0, 2, 1]), _target([], [])]
    losses = model(images, targets)
    assert set(losses) == {"loss_xy", "loss_wh", "loss_obj", "loss_cls"}
    assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.weight.grad is not None and torch.isfinite(model.head.weight.grad).all()
    assert model.head.weight.grad.abs().sum() > 0


def test_multiscale_training_draws_input_sizes_from_the_list():
    torch.manual_seed(0)
    model = YOLOv2(2, width=8, multiscale=[64, 96]).train()
    sizes = []
    model.to_half.register_forward_pre_hook(lambda _, args: sizes.append(args[0].shape[-1]))
    for _ in range(6):
        losses = model([torch.rand(3, 50, 70)], [_target([[5, 5, 30, 40]], [1])])
        assert all(torch.isfinite(v) for v in losses.values())
    with torch.no_grad():
        model.eval()([torch.rand(3, 50, 70)])
    assert set(sizes[:-1]) == {64, 96} and sizes[-1] == 128


def test_boxes_sharing_a_cell_and_anchor_keep_the_last():
    model = YOLOv2(3, width=8)
    boxes = torch.tensor([[10.0, 10, 30, 30], [11, 11, 31, 31], [80, 80, 120, 120]])
    slots, _, _, _, labels = model._assign([(boxes, torch.tensor([0, 1, 2]))], model.anchors, 32, (4, 4, 5), 128)
    assert len(slots) == 2 and labels.tolist() == [1, 2]


def test_eval_returns_detections_inside_each_image():
    torch.manual_seed(0)
    model = YOLOv2(4, width=8, score_thresh=0.0, detections_per_img=7).eval()
    images = [torch.rand(3, 100, 140), torch.rand(3, 128, 128)]
    with torch.no_grad():
        detections = model(images)
    assert_detections_inside(detections, images, 7, 4)
    assert all(((d["scores"] >= 0) & (d["scores"] <= 1)).all() for d in detections)


def test_encoded_box_decodes_back_to_the_original_image_coordinates(monkeypatch):
    """A head output encoding one known box (anchor 3 of cell (2, 1)) comes back in the 200x300 image's pixels."""
    model = YOLOv2(3, width=8).eval()
    box = torch.tensor([[150.0, 30.0, 270.0, 110.0]])  # xyxy in a 300 wide, 200 high image
    net_box = box * torch.tensor([128 / 300, 128 / 200]).repeat(2)
    cells, offsets, twh = encode_boxes(net_box, model.anchors[3:4], 32, (4, 4))
    cx, cy = cells[0].tolist()
    out = torch.full((1, 4, 4, 5, 8), -20.0)
    out[0, cy, cx, 3, :4] = torch.cat([torch.logit(offsets[0].double()).float(), twh[0]])
    out[0, cy, cx, 3, 4] = 20.0  # objectness
    out[0, cy, cx, 3, 5 + 2] = 20.0  # class 2
    assert torch.allclose(decode_boxes(out[..., :4], model.anchors, 32)[0, cy, cx, 3], net_box[0], atol=1e-4)
    monkeypatch.setattr(model, "_raw_output", lambda batch: out)
    det = model([torch.rand(3, 200, 300)])[0]
    assert det["labels"].tolist() == [2]
    assert torch.allclose(det["boxes"], box, atol=1e-4)


def test_kmeans_anchors_finds_two_clusters_sorted_by_area():
    rng = np.random.default_rng(0)
    wh = np.concatenate([rng.normal((40, 20), 1.0, (200, 2)), rng.normal((10, 10), 0.5, (200, 2))])
    anchors = kmeans_anchors(wh, 2)
    assert anchors.shape == (2, 2)
    np.testing.assert_allclose(anchors, [[10, 10], [40, 20]], atol=1.0)


def test_state_dict_restores_anchors():
    anchors = [[5.0, 7.0], [12.0, 9.0], [30.0, 40.0]]
    state = YOLOv2(2, width=8, anchors=anchors).state_dict()
    fresh = YOLOv2(2, width=8, num_anchors=3)
    assert not torch.equal(fresh.anchors, torch.tensor(anchors))
    fresh.load_state_dict(state)
    assert torch.equal(fresh.anchors, torch.tensor(anchors))
    fresh.set_anchors([[1.0, 2.0]] * 3)
    assert fresh.anchors[0].tolist() == [1.0, 2.0]


def test_overfits_one_image():
    torch.manual_seed(0)
    image = torch.full((3, 128, 128), 0.5)
    image[0, 20:60, 15:45] = 1.0  # a red box, class 0
    image[2, 70:110, 60:120] = 1.0  # a blue box, class 1
    target = _target([[15, 20, 45, 60], [60, 70, 120, 110]], [0, 1])
    model = YOLOv2(2, width=16).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(100):
        loss = sum(model([image], [target]).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        det = model.eval()([image])[0]
    for gt_box, gt_label in zip(target["boxes"], target["labels"]):
        best = det["scores"].masked_fill(det["labels"] != gt_label, -1).argmax()
        assert det["labels"][best] == gt_label
        assert box_iou(det["boxes"][best : best + 1], gt_box[None]).item() > 0.5
