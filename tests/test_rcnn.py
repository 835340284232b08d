"""R-CNN: warped crops with context padding, fine-tuning sampling and loss, SVM / ridge fitting with hard-negative
mining, fitted buffers in the state dict, box regression coding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from cvtool.errors import CvtoolError
from cvtool.models.rcnn import (
    context_boxes,
    decode_deltas,
    encode_deltas,
    fit_ridge,
    fit_svm,
    rcnn,
    warp_regions,
)


def _model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    options = {"backbone_options": {"width": 4}, "crop_size": 24, "regions_per_image": 8, "chunk_size": 16,
               "image_mean": [0.0, 0.0, 0.0], "image_std": [1.0, 1.0, 1.0], **kwargs}
    return rcnn(2, **options)


def _target(boxes: list[list[float]], labels: list[int]) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels).long()}


def test_context_boxes_leave_padding_px_of_context_in_the_crop():
    # 48 px crop, 8 px padding: the box fills the central 32 px, so it grows by 48 / 32 = 1.5 about its centre
    boxes = context_boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0]]), 48, 8)
    assert boxes.tolist() == [[5.0, 10.0, 35.0, 70.0]]


def test_warped_crop_shows_the_square_inside_the_context_padding():
    image = torch.zeros(1, 64, 64)
    image[:, 16:32, 16:32] = 1.0  # a 16 px square
    # 24 px crop, 4 px padding: the box [16, 32) warps to crop pixels 4..19 (1 crop px = 1 image px here)
    crops = warp_regions(image, torch.tensor([[16.0, 16.0, 32.0, 32.0], [8.0, 16.0, 24.0, 32.0]]), 24, 4)
    expected = torch.zeros(2, 1, 24, 24)
    expected[0, :, 4:20, 4:20] = 1.0
    expected[1, :, 4:20, 12:24] = 1.0  # the box starts 8 px left of the square: it shows from crop column 12 on
    assert torch.allclose(crops, expected, atol=1e-6)


def test_context_beyond_the_image_border_reads_as_the_mean():
    crops = warp_regions(torch.ones(1, 32, 32), torch.tensor([[0.0, 0.0, 16.0, 16.0]]), 24, 4)
    assert (crops[0, 0, :3] == 0).all() and (crops[0, 0, :, :3] == 0).all()  # 4 px of context above and left
    assert (crops[0, 0, 4:, 4:] == 1).all()


def test_regression_targets_follow_girshicks_parametrisation_and_round_trip():
    proposal, gt = torch.tensor([[0.0, 0.0, 10.0, 20.0]]), torch.tensor([[5.0, 0.0, 15.0, 40.0]])
    deltas = encode_deltas(proposal, gt)
    # centres (5, 10) -> (10, 20): dx = 5 / 10, dy = 10 / 20; sizes 10x20 -> 10x40
    assert torch.allclose(deltas, torch.tensor([[0.5, 0.5, 0.0, math.log(2)]]))
    torch.manual_seed(0)
    corners = torch.rand(50, 2) * 100
    proposals = torch.cat([corners, corners + 1 + torch.rand(50, 2) * 50], 1)
    targets = torch.cat([corners + torch.randn(50, 2), corners + 5 + torch.rand(50, 2) * 50], 1)
    assert torch.allclose(decode_deltas(proposals, encode_deltas(proposals, targets)), targets, atol=1e-4)
    per_class = decode_deltas(proposals, encode_deltas(proposals, targets)[:, None].expand(-1, 3, -1))
    assert per_class.shape == (50, 3, 4) and torch.allclose(per_class[:, 2], targets, atol=1e-4)


def test_fine_tuning_samples_a_quarter_foreground_labelled_with_the_class():
    model = _model(regions_per_image=8)
    gt = [[10.0, 10.0, 30.0, 30.0]]
    near = [[10.0 + d, 10.0, 30.0 + d, 30.0] for d in range(1, 6)]  # IoU >= 0.5 with the ground truth
    far = [[40.0 + d, 40.0, 60.0 + d, 60.0] for d in range(20)]
    boxes, labels = model._sample(torch.zeros(3, 80, 80), _target(gt, [2]), torch.tensor(near + far))
    assert sorted(labels.tolist()) == [0] * 6 + [2, 2]
    iou = box_iou(boxes, torch.tensor(gt))[:, 0]
    assert (iou[labels == 2] >= 0.5).all() and (iou[labels == 0] < 0.5).all()


def test_train_loss_is_finite_and_backpropagates():
    model = _model().train()
    images = [torch.rand(3, 40, 50), torch.rand(3, 60, 30)]
    targets = [_target([[5, 5, 25, 30], [20, 10, 45, 35]], [1, 2]), _target([], [])]
    proposals = [torch.tensor([[4.0, 6, 24, 30], [0, 0, 20, 20], [30, 20, 50, 40]]), torch.tensor([[0.0, 0, 10, 10]])]
    losses = model(images, targets, proposals)
    assert set(losses) == {"loss_classifier"} and losses["loss_classifier"].ndim == 0
    assert torch.isfinite(losses["loss_classifier"])
    losses["loss_classifier"].backward()
    first_conv = next(m for m in model.cnn.modules() if isinstance(m, torch.nn.Conv2d))
    assert model.classifier.weight.grad.abs().sum() > 0 and first_conv.weight.grad.abs().sum() > 0


def test_missing_proposals_are_a_user_error():
    model = _model()
    with pytest.raises(CvtoolError, match="proposals"):
        model.train()([torch.rand(3, 32, 32)], [_target([[1, 1, 9, 9]], [1])])
    with pytest.raises(CvtoolError, match="proposals"):
        model.eval()([torch.rand(3, 32, 32)])
    with pytest.raises(CvtoolError, match="model=fast_rcnn model.proposals=rpn"):  # an RPN is fast_rcnn's
        _model(proposals="rpn")


def _scene(colour: int, box: list[int], seed: int) -> torch.Tensor:
    """A dim noisy 48x48 image with one saturated square of channel `colour` at `box`."""
    image = torch.rand(3, 48, 48, generator=torch.Generator().manual_seed(seed)) * 0.2
    x1, y1, x2, y2 = box
    image[colour, y1:y2, x1:x2] = 1.0
    return image


def _grid_proposals() -> torch.Tensor:
    """16 px boxes on a 4 px grid over a 48x48 image."""
    starts = torch.arange(0, 33, 4.0)
    y, x = torch.meshgrid(starts, starts, indexing="ij")
    return torch.stack([x, y, x + 16, y + 16], -1).reshape(-1, 4)


def _fit_batches() -> list[tuple[list[torch.Tensor], list[dict], list[torch.Tensor]]]:
    """Two batches of three images: class 1 a red square, class 2 a green one, at various places."""
    batches = []
    for b in range(2):
        images, targets = [], []
        for i in range(3):
            label = 1 + (b + i) % 2
            x, y = 4 * (i + b), 28 - 4 * i
            images.append(_scene(label - 1, [x, y, x + 16, y + 16], seed=10 * b + i))
            targets.append(_target([[x, y, x + 16, y + 16]], [label]))
        batches.append((images, targets, [_grid_proposals()] * 3))
    return batches


def test_fit_classifiers_sets_the_svms_and_the_state_dict_carries_them():
    model = _model(svm_negatives=40, svm_rounds=3, svm_C=0.1, ridge_alpha=100.0, score_thresh=0.0)
    test_image, test_props = _scene(0, [16, 16, 32, 32], seed=99), _grid_proposals()
    before = model.eval()([test_image], proposals=[test_props])[0]
    summary = model.fit_classifiers(_fit_batches())
    assert bool(model.fitted) and not model.training
    # three squares of each class are the positives; negatives: every other region with IoU < 0.3 with them
    assert [summary[c]["positives"] for c in (0, 1)] == [3, 3]
    assert all(1 <= summary[c]["rounds"] <= 3 and summary[c]["negatives_used"] >= 40 for c in (0, 1))
    assert all(summary[c]["regression_samples"] > 3 for c in (0, 1))  # ground truths + grid boxes at IoU >= 0.6
    after = model([test_image], proposals=[test_props])[0]
    assert not torch.equal(before["scores"], after["scores"])
    # the red square is found as class 1, its regressed box (off the 4 px proposal grid) on the square
    assert after["labels"][0] == 1 and after["scores"][0] > 0.5
    assert box_iou(after["boxes"][:1], torch.tensor([[16.0, 16.0, 32.0, 32.0]]))[0, 0] >= 0.5
    assert (after["boxes"][0] % 4).abs().sum() > 0.1
    fresh = _model(score_thresh=0.0).eval()
    fresh.load_state_dict(model.state_dict())
    assert bool(fresh.fitted) and torch.equal(fresh.svm_weight, model.svm_weight)
    restored = fresh([test_image], proposals=[test_props])[0]
    assert torch.equal(restored["scores"], after["scores"]) and torch.equal(restored["boxes"], after["boxes"])


def test_fit_refuses_labels_without_the_background_offset():
    images, targets, proposals = _fit_batches()[0]
    targets = [{**t, "labels": t["labels"] - 1} for t in targets]
    with pytest.raises(ValueError, match="label_offset"):
        _model().fit_classifiers([(images, targets, proposals)])


def test_hard_negative_mining_adds_the_negatives_inside_the_margin():
    rng = np.random.default_rng(0)
    positives = rng.normal(2.0, 0.3, (20, 2))
    negatives = np.concatenate([rng.normal(-2.0, 0.3, (200, 2)), rng.normal(0.8, 0.2, (10, 2))])  # 10 hard ones
    features = np.concatenate([positives, negatives]).astype(np.float32)
    is_pos = np.r_[np.ones(20, bool), np.zeros(210, bool)]
    w, b, info = fit_svm(features, is_pos, ~is_pos, C=1.0, pos_weight=1.0, negatives=20, rounds=4, seed=0)
    assert info["positives"] == 20 and info["negatives"] == 210 and info["rounds"] >= 2
    assert info["negatives_used"] > 20  # round 1's random 20 plus the mined hard ones
    scores = features @ w + b
    assert (scores[:20] > 0).mean() >= 0.9 and (scores[20:220] < -1).all()


def test_ridge_recovers_a_linear_map_and_returns_zeros_without_samples():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 5))
    weights, bias = rng.normal(size=(4, 5)), np.array([0.1, -0.2, 0.3, 0.0])
    w, b = fit_ridge(features, features @ weights.T + bias, alpha=1e-6)
    assert np.allclose(w, weights, atol=1e-4) and np.allclose(b, bias, atol=1e-4)
    w, b = fit_ridge(np.zeros((0, 5)), np.zeros((0, 4)), alpha=1.0)
    assert w.shape == (4, 5) and not w.any() and not b.any()
