"""OverFeat: window geometry, location labels, losses, the greedy merge, eval outputs, a tiny overfit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_detections_inside
from torchvision.ops import box_iou

from cvtool.errors import CvtoolError
from cvtool.models import create_model
from cvtool.models.overfeat import (
    IGNORE,
    OverFeat,
    assign_locations,
    encode_boxes,
    greedy_merge,
    match_scores,
    merge_detections,
    window_boxes,
    window_centres,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _target(boxes: list[list[float]], labels: list[int]) -> dict:
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels).long()}


def _tiny(num_classes: int = 3, **kwargs) -> OverFeat:
    options = {"width": 4, "hidden": 8, "window": 3, "scales": [1.0, 2.0], "image_size": 64, **kwargs}
    return OverFeat(num_classes, **options)


def test_windows_are_stride_spaced_squares_centred_on_their_cells():
    centres = window_centres((2, 3))
    assert centres.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert window_boxes(centres[5:], 24).tolist() == [[8, 0, 32, 24]]


def test_dense_outputs_cover_every_window_of_every_scale_in_image_pixels():
    """With a zero regressor each location's box is its window: location (row 1, col 2) of the 2x scale's 16 x 16
    map is centred on (20, 12) of the 128 px input with a 24 px side, i.e. [4, 0, 16, 12] of the 64 px image."""
    model = _tiny().eval()
    torch.nn.init.zeros_(model.box_regressor.weight)
    torch.nn.init.zeros_(model.box_regressor.bias)
    with torch.no_grad():
        boxes, scores = model.dense_detections(torch.rand(2, 3, 64, 64))
    assert model.sizes == [64, 128] and model.window == 24
    assert boxes.shape == (2, 8 * 8 + 16 * 16, 4) and scores.shape == (2, 320, 3)
    assert boxes[1, 64 + 1 * 16 + 2].tolist() == [4, 0, 16, 12]
    assert boxes[0, 9].tolist() == [0, 0, 24, 24]  # scale 1, (row 1, col 1): centre (12, 12)
    assert ((scores > 0) & (scores.sum(-1, keepdim=True) < 1)).all()  # the background takes the rest


def test_locations_are_labelled_by_centre_and_scale_band():
    """8 x 8 windows of 24 px, stride 8. gt 0 (16 px, in the band) is centred on the corner of 4 cells: those are
    positive; gt 1 (32 px: 1.33 windows, just outside the band) makes the 12 windows centred inside it ignored; gt 2
    (4 px) fits no band but is forced to this scale: the one cell within 4 px of its centre is positive."""
    boxes = torch.tensor([[16.0, 16, 32, 32], [40, 0, 64, 32], [0, 48, 4, 52]])
    labels = torch.tensor([2, 1, 0])
    centres = window_centres((8, 8))
    assigned, match = assign_locations(boxes, labels, centres, 24, torch.tensor([False, False, True]), background=3)
    expected = torch.full((8, 8), 3)
    expected[0:4, 5:8] = IGNORE
    expected[2:4, 2:4] = 2
    expected[6, 0] = 0
    assert torch.equal(assigned.view(8, 8), expected)
    assert match.view(8, 8)[2:4, 2:4].eq(0).all() and match.view(8, 8)[6, 0] == 2 and (match >= 0).sum() == 5
    unforced, _ = assign_locations(boxes, labels, centres, 24, torch.zeros(3, dtype=torch.bool), 3)
    assert unforced.view(8, 8)[6, 0] == 3
    taller, _ = assign_locations(boxes + torch.tensor([0, 0, 0, 8.0]), labels, centres, 24, torch.zeros(3) > 0, 3)
    assert taller.view(8, 8)[0:4, 5:8].eq(3).all()  # 40 px: too far from the band to be ignored
    # window (2, 2) is [8, 8, 32, 32]: gt 0's edges lie +8, +8, 0, 0 px from its edges, a third of a window
    torch.testing.assert_close(encode_boxes(boxes[:1], centres[18:19], 24), torch.tensor([[1 / 3, 1 / 3, 0, 0]]))


def test_a_gt_fitting_no_band_is_forced_to_its_closest_scale():
    model = _tiny()  # windows of 24 px at inputs of 64 and 128 px: bands [12, 28.8] and [6, 14.4] px of the image
    at_scales = torch.tensor([[[0.0, 0, 4, 4], [0, 0, 20, 20], [0, 0, 40, 40]]]) * torch.tensor([1.0, 2.0])[:, None,
                                                                                                          None]
    assert model._forced_scale(at_scales).tolist() == [1, -1, 0]


def test_train_losses_are_finite_and_backpropagate():
    torch.manual_seed(0)
    model = _tiny().train()
    images = [torch.rand(3, 64, 64), torch.rand(3, 48, 80)]
    # the 20 px gt is positive at the 1x scale, the 10 px one at the 2x scale; the 30 px one is forced to the 1x
    targets = [_target([[8, 8, 28, 26], [30, 30, 50, 60], [40, 4, 50, 12]], [0, 2, 1]), _target([], [])]
    for scale in range(2):
        losses = model._loss(images, targets, scale)
        assert set(losses) == {"loss_classifier", "loss_box_reg"}
        assert all(v.ndim == 0 and torch.isfinite(v) and v.dtype == torch.float32 for v in losses.values())
        model.zero_grad()
        sum(losses.values()).backward()
        for layer in (model.classifier, model.box_regressor, model.trunk[0][0]):
            assert torch.isfinite(layer.weight.grad).all() and layer.weight.grad.abs().sum() > 0
    assert set(model(images, targets)) == {"loss_classifier", "loss_box_reg"}  # a random scale through forward


def test_match_score_is_centre_distance_over_size_plus_one_minus_iou():
    a = np.array([[0.0, 0, 10, 10]])
    b = np.array([[1.0, 1, 11, 11], [0, 0, 10, 10], [10, 0, 20, 10]])
    np.testing.assert_allclose(match_scores(a, b)[0], [np.sqrt(2) / 10 + 1 - 81 / 119, 0, 2], rtol=1e-6)


def test_greedy_merge_averages_near_boxes_and_keeps_far_ones():
    boxes = np.array([[0.0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 11, 11], [2, 0, 12, 10]])
    assert greedy_merge(boxes, 1.0).tolist() == [0, 1, 0, 0]
    assert greedy_merge(boxes, 0.1).tolist() == [0, 1, 2, 3]
    # two clusters that would merge into one at a loose threshold
    assert greedy_merge(boxes, 10.0).tolist() == [0, 0, 0, 0]


def test_merged_detections_average_boxes_and_sum_or_max_scores_per_class():
    """Per class: boxes 0 and 1 (class 1) merge to their mean with 0.6 + 0.3; box 3 (class 0) is box 0's double
    but stays apart; box 4's best score is below the threshold."""
    boxes = torch.tensor([[0.0, 0, 10, 10], [2, 2, 12, 12], [50, 50, 60, 60], [0, 0, 10, 10], [30, 30, 40, 40]])
    scores = torch.tensor([[0.0, 0.6], [0.1, 0.3], [0.0, 0.5], [0.95, 0.0], [0.05, 0.04]])
    options = {"score_thresh": 0.1, "merge_threshold": 1.0, "candidates_per_class": 10}
    scores.requires_grad_()
    summed = merge_detections(boxes, scores, (100, 100), **options)
    summed["scores"].sum().backward()  # differentiable (Grad-CAM of a box): each kept window's score counts once
    assert scores.grad.tolist() == [[0, 1], [0, 1], [0, 1], [1, 0], [0, 0]]
    assert summed["labels"].tolist() == [0, 1, 1] and summed["labels"].dtype == torch.int64
    torch.testing.assert_close(summed["scores"], torch.tensor([0.95, 0.9, 0.5]))
    torch.testing.assert_close(summed["boxes"], torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]]))
    highest = merge_detections(boxes, scores, (100, 100), merge_score="max", **options)
    torch.testing.assert_close(highest["scores"], torch.tensor([0.95, 0.6, 0.5]))
    capped = merge_detections(boxes, scores, (100, 100), **{**options, "candidates_per_class": 1})
    torch.testing.assert_close(capped["scores"], torch.tensor([0.95, 0.6]))
    empty = merge_detections(boxes, scores, (100, 100), **{**options, "score_thresh": 0.99})
    assert empty["boxes"].shape == (0, 4) and empty["labels"].dtype == torch.int64


def test_eval_returns_detections_inside_each_image():
    torch.manual_seed(0)
    model = create_model("overfeat", num_classes=4, width=4, hidden=8, score_thresh=0.0,
                         detections_per_img=7).eval()
    assert model.label_offset == 0 and model.explained_layer == "trunk.7"
    images = [torch.rand(3, 100, 140), torch.rand(3, 128, 128)]
    with torch.no_grad():
        assert_detections_inside(model(images), images, 7, 4)


@pytest.mark.parametrize(("options", "key"), [({"window": 4}, "model.window"), ({"scales": [0.0]}, "model.scales"),
                                              ({"merge_score": "mean"}, "model.merge_score")])
def test_bad_options_name_their_key(options, key):
    with pytest.raises(CvtoolError) as error:
        create_model("overfeat", num_classes=2, **options)
    assert error.value.where == key


def test_overfits_two_tiny_images():
    torch.manual_seed(0)
    images, targets = [], []
    for red, blue in (((8, 8, 26, 28), (36, 30, 58, 50)), ((30, 6, 50, 24), (6, 34, 20, 50))):
        image = torch.full((3, 64, 64), 0.5)
        image[0, red[1]:red[3], red[0]:red[2]] = 1.0  # class 0
        image[2, blue[1]:blue[3], blue[0]:blue[2]] = 1.0  # class 1
        images.append(image)
        targets.append(_target([red, blue], [0, 1]))
    model = _tiny(2, width=6, hidden=24).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def total(scale: int) -> torch.Tensor:
        return sum(model._loss(images, targets, scale).values())

    with torch.no_grad():
        before = total(0) + total(1)
    for step in range(60):
        loss = total(step % 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = total(0) + total(1)
        detections = model.eval()(images)
    assert after < 0.1 * before
    for det, target in zip(detections, targets):
        for box, label in zip(target["boxes"], target["labels"]):
            best = det["scores"].masked_fill(det["labels"] != label, -1).argmax()
            assert det["labels"][best] == label and box_iou(det["boxes"][best:best + 1], box[None]).item() > 0.4
