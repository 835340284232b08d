"""Semantic segmentation metrics (one confusion matrix over the split) and index PNG reading/writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score

from cvtool.data.index_png import read_index_png, write_index_png
from cvtool.errors import CvtoolError
from cvtool.metrics.segmentation import SegmentationEvaluator, confusion_matrix, segmentation_metrics


def test_split_level_not_mean_of_images():
    ev = SegmentationEvaluator(num_classes=2)
    ev.process({"mask": np.array([[[0, 0], [0, 0]]])}, np.array([[[0, 0], [0, 0]]]))  # per-image mIoU 1
    ev.process({"mask": np.array([[[0, 1], [1, 1]]])}, np.array([[[1, 1], [1, 1]]]))  # per-image (0 + 3/4) / 2
    m = ev.evaluate()
    # confusion [[4, 1], [0, 3]]: IoU0 = 4 / (5 + 4 - 4) = 0.8, IoU1 = 3 / (3 + 4 - 3) = 0.75
    # split mIoU 0.775, not the per-image mean (1 + 0.375) / 2 = 0.6875
    assert m["per_class_iou"] == [0.8, 0.75] and m["mIoU"] == pytest.approx(0.775, abs=1e-15)
    assert m["pixel_acc"] == 7 / 8 and m["per_class_acc"] == [0.8, 1.0] and m["mean_class_acc"] == 0.9
    assert m["fwIoU"] == pytest.approx(5 / 8 * 0.8 + 3 / 8 * 0.75, abs=1e-15) and m["num_pixels"] == 8


def test_ignored_pixels():
    gt = np.array([[0, 255, 1], [7, 1, -1]])
    pred = np.array([[0, 1, 1], [0, 0, 2]])
    # 255, 7 (>= num_classes) and -1 are left out whatever the prediction: pairs (0,0), (1,1), (1,0)
    assert confusion_matrix(gt, pred, 3, 255).tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 0]]
    gt_255_class = np.array([0, 255])  # without an ignore index, 255 >= num_classes is still out of range
    assert confusion_matrix(gt_255_class, np.array([0, 0]), 3, None).sum() == 1
    m = segmentation_metrics(confusion_matrix(gt, pred, 3, 255))
    assert m["num_pixels"] == 3 and m["pixel_acc"] == 2 / 3
    # an ignore index inside the class range drops those GT pixels too: only (0, 0) is left
    assert confusion_matrix(gt, pred, 3, 1).tolist() == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]


def test_absent_and_predicted_only_classes():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])
    m = segmentation_metrics(confusion_matrix(gt, pred, 4, 255))
    # IoU0 = 1 / (2 + 1 - 1), IoU1 = 2 / 2, class 2 predicted only -> 0 / 1 = 0, class 3 nowhere -> None
    assert m["per_class_iou"] == [0.5, 1.0, 0.0, None]
    assert m["mIoU"] == 0.5  # (0.5 + 1 + 0) / 3
    assert m["per_class_acc"] == [0.5, 1.0, None, None] and m["mean_class_acc"] == 0.75
    assert m["fwIoU"] == 0.75  # 2/4 * 0.5 + 2/4 * 1 (+ 0 * 0)


def test_logits_and_sklearn_reference():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 4, (3, 8, 8))
    gt[rng.random(gt.shape) < 0.1] = 255
    logits = rng.normal(size=(3, 4, 8, 8))
    pred = logits.argmax(1)
    ev_logits, ev_labels = SegmentationEvaluator(4), SegmentationEvaluator(4)
    ev_logits.process({"mask": gt}, logits)  # (N, C, H, W) -> argmax over C
    ev_labels.process({"mask": gt}, pred)
    m = ev_logits.evaluate()
    assert m == ev_labels.evaluate()
    valid = gt != 255
    expected = sk_confusion_matrix(gt[valid], pred[valid], labels=range(4))
    assert ev_logits.confusion.tolist() == expected.tolist()
    np.testing.assert_allclose(m["per_class_iou"], jaccard_score(gt[valid], pred[valid], average=None), atol=1e-15)


def test_read_palette_png_as_indices(tmp_path):
    indices = np.array([[0, 1, 2], [3, 255, 1]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    palette = [0, 0, 0] * 256
    # colours whose grey conversion would differ from the index (index 0 white, 1 black, 255 mid grey, ...)
    palette[0:12] = [255, 255, 255, 0, 0, 0, 200, 10, 10, 10, 200, 10]
    palette[255 * 3:] = [128, 128, 128]
    image.putpalette(palette)
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").convert("L").getpixel((0, 0)) == 255  # a conversion would break it
    got = read_index_png(tmp_path / "p.png")
    assert got.dtype == np.uint8 and got.tolist() == indices.tolist()


def test_read_grey_png_and_reject_rgb(tmp_path):
    values = np.array([[0, 5], [17, 255]], np.uint8)
    Image.fromarray(values, mode="L").save(tmp_path / "l.png")
    assert read_index_png(tmp_path / "l.png").tolist() == values.tolist()
    path = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(path)
    with pytest.raises(CvtoolError) as err:
        read_index_png(path)
    assert str(path) in str(err.value) and "RGB" in str(err.value)


def test_write_index_png_round_trip(tmp_path):
    indices = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = write_index_png(tmp_path / "w.png", indices)
    assert Image.open(path).mode == "P"
    assert read_index_png(path).tolist() == indices.tolist()
