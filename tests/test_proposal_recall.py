"""Proposal recall (detectron2's greedy one-to-one matching) on hand-made boxes, and the recall/proposal pictures."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import pixels_of, png

from cvtool.metrics.proposals import box_iou, greedy_overlaps, proposal_recall, recall_curve
from cvtool.viz.proposal_plots import draw_proposals, plot_recall_curves

# image 0: gt A (area 100) and B (area 90); P1 covers A exactly (IoU 1) and B at 0.9, P2 = [0 0 10 5] has IoU 0.5
# with A and 50/90 = 0.556 with B. Greedy: A takes P1, B is left with P2 (max IoU per gt would give B 0.9).
# image 1: no gt, proposals (nothing to count). image 2: a gt, no proposals (a miss).
# image 3: gt C (area 400); its first proposal misses (IoU 0), its second [0 0 20 16] has IoU 320/400 = 0.8.
GT = [np.array([[0, 0, 10, 10], [0, 0, 10, 9]]), np.zeros((0, 4)), np.array([[20, 20, 30, 30]]),
      np.array([[0, 0, 20, 20]])]
PROPOSALS = [np.array([[0, 0, 10, 10], [0, 0, 10, 5]]), np.array([[0, 0, 5, 5]]), np.zeros((0, 4)),
             np.array([[50, 50, 60, 60], [0, 0, 20, 16]])]


def test_box_iou_of_hand_made_boxes():
    iou = box_iou(PROPOSALS[0], GT[0])
    np.testing.assert_allclose(iou, [[1.0, 0.9], [0.5, 50 / 90]])
    assert box_iou(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]])).tolist() == [[0.0]]  # empty boxes: 0


def test_recall_on_hand_made_boxes():
    recall = proposal_recall(GT, PROPOSALS, counts=(1, 2))
    # first proposal only: matched IoUs A 1, B 0 (P1 went to A), image 2's gt 0, C 0 -> 1 of 4 gt at every IoU
    assert recall["recall@0.5"]["1"] == recall["recall@0.7"]["1"] == recall["AR"]["1"] == 0.25
    # two proposals: A 1, B 0.556, 0, C 0.8 -> at 0.5: 3/4; at 0.7: 2/4; thresholds 0.5:0.95 passed: A 10, B 2
    # (0.5, 0.55), C 7 (0.5 .. 0.8; IoU exactly 0.8 counts at 0.8) -> AR = 19 / 40
    assert recall["recall@0.5"]["2"] == 0.75 and recall["recall@0.7"]["2"] == 0.5
    assert recall["AR"]["2"] == pytest.approx(19 / 40)


def test_greedy_matching_differs_from_the_best_proposal_per_gt():
    iou = box_iou(PROPOSALS[0], GT[0])
    np.testing.assert_allclose(greedy_overlaps(iou), [1.0, 50 / 90])
    np.testing.assert_allclose(iou.max(axis=0), [1.0, 0.9])  # what per-gt maxima would count at IoU 0.7
    assert recall_curve(GT[:1], PROPOSALS[:1], [2])["recall@0.7"] == [0.5]


def test_greedy_overlaps_match_detectron2s_loop_including_ties():
    def detectron2(iou):  # evaluation/coco_evaluation.py::_evaluate_box_proposals
        iou, found = iou.copy(), []
        for _ in range(min(iou.shape)):
            gt = iou.max(axis=0).argmax()
            row = iou[:, gt].argmax()
            found.append(iou[row, gt])
            iou[row, :], iou[:, gt] = -1, -1
        return sorted(found + [0.0] * (iou.shape[1] - len(found)))

    rng = np.random.default_rng(0)
    for trial in range(400):
        shape = rng.integers(0, 7, size=2)
        iou = rng.choice([0.0, 0.4, 0.6, 0.8], size=shape) if trial % 2 else rng.random(shape)
        assert sorted(greedy_overlaps(iou)) == detectron2(iou)


def test_recall_keys_and_undefined_without_gt():
    recall = proposal_recall([np.zeros((0, 4))], [np.array([[0, 0, 4, 4]])])
    assert recall == {key: {"100": None, "300": None, "1000": None} for key in ("recall@0.5", "recall@0.7", "AR")}
    curve = recall_curve(GT, PROPOSALS, [1, 2, 1000])
    assert curve["recall@0.5"] == [0.25, 0.75, 0.75]  # more proposals than an image has: all of them


def test_recall_curves_plot(tmp_path):
    curves = {"a": recall_curve(GT, PROPOSALS, [1, 2]), "b": {"recall@0.5": [0.1, None], "recall@0.7": [0.0, 0.1],
                                                                  "AR": [None, None]}}
    image = png(plot_recall_curves(curves, [1, 2], tmp_path / "recall.png"))
    assert image.width > 3 * image.height / 2


def test_draw_proposals_outlines_the_top_boxes_best_in_red(tmp_path):
    boxes = np.array([[8, 8, 40, 40], [20, 24, 60, 60], [0, 0, 64, 64]])
    image = png(draw_proposals(np.zeros((64, 64, 3), np.uint8), boxes, tmp_path / "p.png", top=2)).convert("RGB")
    assert image.size == (256, 256)  # upscaled 4x
    pixels = np.asarray(image)
    assert tuple(pixels[100, 32]) == (255, 0, 0) and tuple(pixels[100, 80]) == (255, 255, 0)  # best, second
    assert tuple(pixels[120, 255]) == (0, 0, 0)  # the third box (the image border) is not drawn
    assert pixels_of(image, (255, 0, 0)) > 0 and pixels_of(image, (255, 255, 0)) > 0
    grey = png(draw_proposals(np.full((64, 64, 3), 0.5, np.float32), boxes, tmp_path / "f.png", top=1))
    assert tuple(np.asarray(grey.convert("RGB"))[120, 200]) == (128, 128, 128)  # float images in [0, 1] scaled
