"""Proposal files: Fast R-CNN .mat, detectron2 and MMDetection pickles, hand-written and round-tripped, and the
checks against the split (count, order, empty sets, x/y swapped, malformed files)."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import without_torch
from scipy.io import savemat

from cvtool.data.proposal_files import FORMATS, ProposalSet, proposal_format, read_proposals, write_proposals
from cvtool.errors import CvtoolError

IDS = ["000005", "000007"]
SIZES = [(100, 50), (60, 80)]  # (width, height)


def cell(arrays: list, shape: tuple[int, int] | None = None) -> np.ndarray:
    out = np.empty(len(arrays), dtype=object)
    for k, array in enumerate(arrays):
        out[k] = array
    return out.reshape(shape or (1, len(arrays)))


def dump(path: Path, data) -> Path:
    path.write_bytes(pickle.dumps(data))
    return path


@pytest.fixture
def proposals() -> ProposalSet:
    return ProposalSet(list(IDS), [np.array([[20, 10, 80, 40], [0, 0, 100, 50], [3.25, 4.5, 7.75, 9]], np.float32),
                                   np.array([[2, 4, 7, 9]], np.float32)],
                       [np.array([0.9, 0.5, -1.5], np.float32), np.array([2.0], np.float32)], "test")


def test_hand_written_mat_reads_as_continuous_boxes(tmp_path):
    # MATLAB layout: 1 x N cell of n x 4 [y1 x1 y2 x2] 1-based inclusive (double or uint16), images as an N x 1 cell
    boxes = cell([np.array([[11, 21, 40, 80], [1, 1, 50, 100]], np.float64), np.array([[5, 3, 9, 7]], np.uint16)])
    savemat(tmp_path / "ss.mat", {"boxes": boxes, "images": cell(IDS, (2, 1))})
    read = read_proposals(tmp_path / "ss.mat", IDS, SIZES)
    np.testing.assert_array_equal(read.boxes[0], [[20, 10, 80, 40], [0, 0, 100, 50]])  # x1 = mat_x1 - 1, x2 = mat_x2
    np.testing.assert_array_equal(read.boxes[1], [[2, 4, 7, 9]])
    assert read.boxes[0].dtype == np.float32 and read.scores == [None, None] and read.ids == IDS


def test_hand_written_detectron2_dict_reads_with_int_ids_and_old_key_names(tmp_path):
    data = {"ids": [5, 7], "boxes": [np.array([[20, 10, 80, 40]], np.float32), np.array([[2, 4, 7, 9]], np.float32)],
            "objectness_logits": [np.array([3.5], np.float32), np.array([-1.0], np.float32)], "bbox_mode": 0}
    read = read_proposals(dump(tmp_path / "d2.pkl", data), ["5", "7"], SIZES)
    np.testing.assert_array_equal(read.boxes[1], [[2, 4, 7, 9]])
    np.testing.assert_array_equal(read.scores[0], [3.5])
    old = {"indexes": ["a"], "boxes": [np.array([[1, 2, 3, 4]])], "scores": [np.array([0.25])]}  # Detectron1 names
    read = read_proposals(dump(tmp_path / "old.pkl", old), ["a"], [None])
    np.testing.assert_array_equal(read.scores[0], [0.25])


def test_hand_written_mmdet_list_reads_with_and_without_score_column(tmp_path):
    data = [np.array([[20, 10, 80, 40, 0.75], [0, 0, 100, 50, 0.5]], np.float32), np.array([[2, 4, 7, 9]], np.float32)]
    read = read_proposals(dump(tmp_path / "mm.pkl", data), IDS, SIZES)
    np.testing.assert_array_equal(read.boxes[0], [[20, 10, 80, 40], [0, 0, 100, 50]])
    np.testing.assert_array_equal(read.scores[0], [0.75, 0.5])
    assert read.scores[1] is None and read.boxes[1].shape == (1, 4)


@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_keeps_boxes_scores_and_order(tmp_path, proposals, fmt):
    path = write_proposals(tmp_path / ("p.mat" if fmt == "mat" else "p.pkl"), proposals, fmt)
    assert proposal_format(path) == fmt and [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left
    read = read_proposals(path, IDS, SIZES)
    for got, want in zip(read.boxes + read.scores, proposals.boxes + proposals.scores):
        np.testing.assert_array_equal(got, want)


def test_mat_is_written_in_fast_rcnn_layout(tmp_path, proposals):
    from scipy.io import loadmat

    data = loadmat(write_proposals(tmp_path / "p.mat", proposals))
    np.testing.assert_array_equal(data["boxes"][0, 0][0], [11, 21, 40, 80])  # [y1 x1 y2 x2], 1-based inclusive
    assert data["boxes"].shape == (1, 2) and [str(c[0]) for c in data["images"].ravel()] == IDS


def test_round_trip_of_equal_sized_sets(tmp_path):
    same = ProposalSet(list(IDS), [np.array([[1, 2, 3, 4]], np.float32)] * 2, [None, None], "test")
    for fmt in FORMATS:
        read = read_proposals(write_proposals(tmp_path / f"{fmt}.x", same, fmt), IDS, SIZES, fmt)
        assert [b.tolist() for b in read.boxes] == [[[1, 2, 3, 4]]] * 2


def test_round_trip_without_scores(tmp_path, proposals):
    proposals.scores = [None, None]
    for fmt in ("mat", "mmdet"):
        assert read_proposals(write_proposals(tmp_path / f"{fmt}.x", proposals, fmt), IDS, SIZES, fmt).scores == \
            [None, None]
    read = read_proposals(write_proposals(tmp_path / "d2.pkl", proposals), IDS, SIZES)
    np.testing.assert_array_equal(read.scores[0], [0, -1, -2])  # detectron2 needs logits: minus the rank


def test_format_from_suffix_and_content(tmp_path, proposals):
    assert proposal_format(tmp_path / "new.pkl") == "detectron2" and proposal_format(tmp_path / "a.MAT") == "mat"
    assert proposal_format(dump(tmp_path / "list.pickle", [np.zeros((1, 4))])) == "mmdet"
    assert proposal_format(dump(tmp_path / "dict.pkl", {"ids": []})) == "detectron2"
    with pytest.raises(CvtoolError, match="suffix"):
        proposal_format(tmp_path / "p.txt")
    with pytest.raises(CvtoolError, match="unknown proposal file format"):
        write_proposals(tmp_path / "p.pkl", proposals, "coco")


def raises(path: Path, *images: str, **kwargs) -> str:
    """The message of the CvtoolError reading `path` raises, checked to name the file and `images`."""
    with pytest.raises(CvtoolError) as error:
        read_proposals(path, kwargs.get("ids", IDS), kwargs.get("sizes", SIZES))
    message = str(error.value)
    assert str(path) in message and all(image in message for image in images), message
    return message


def test_image_count_differing_from_the_split_names_the_first_missing_image(tmp_path, proposals):
    path = write_proposals(tmp_path / "p.pkl", proposals, "mmdet")
    assert "2 images but the split has 3" in raises(path, "000009", ids=[*IDS, "000009"], sizes=[*SIZES, None])
    assert "first extra image" in raises(path, "#1", ids=IDS[:1], sizes=SIZES[:1])


@pytest.mark.parametrize("fmt", ["mat", "detectron2"])
def test_order_differing_from_the_split_names_the_image(tmp_path, proposals, fmt):
    path = write_proposals(tmp_path / ("p.mat" if fmt == "mat" else "p.pkl"), proposals, fmt)
    assert "order" in raises(path, "'000007'", "'000005'", ids=IDS[::-1], sizes=SIZES[::-1])


def test_empty_proposal_set_names_the_image(tmp_path):
    path = dump(tmp_path / "mm.pkl", [np.array([[1, 2, 3, 4]], np.float32), np.zeros((0, 4), np.float32)])
    assert "no proposals" in raises(path, "000007")
    savemat(tmp_path / "e.mat", {"boxes": cell([np.array([[1, 1, 2, 2]]), np.zeros((0, 0))])})  # MATLAB's []
    assert "no proposals" in raises(tmp_path / "e.mat", "000007")


def test_swapped_x_and_y_are_detected_from_boxes_outside_the_image(tmp_path):
    wide = np.array([[2, 5, 18, 90]], np.float32)  # a [y1 x1 y2 x2] box of the 100 x 50 image, read as x1 y1 x2 y2
    data = {"ids": IDS, "boxes": [wide, np.array([[2, 4, 7, 9]], np.float32)], "bbox_mode": 0}
    assert "look like [y1 x1 y2 x2]" in raises(dump(tmp_path / "d2.pkl", data), "000005")
    # a .mat holding [x1 y1 x2 y2]: [21 11 80 40] read as [y1 x1 y2 x2] puts y2 = 80 below the 50 px image
    savemat(tmp_path / "xy.mat", {"boxes": cell([np.array([[21, 11, 80, 40]]), np.array([[3, 5, 7, 9]])])})
    assert "look like [x1 y1 x2 y2]" in raises(tmp_path / "xy.mat", "000005")
    # within 1 px of the border is rounding, not a swap; unknown sizes skip the check
    ok = {"ids": IDS, "boxes": [np.array([[-1, -1, 101, 51]]), wide], "bbox_mode": 0}
    assert read_proposals(dump(tmp_path / "ok.pkl", ok), IDS, [SIZES[0], None]).boxes[1].shape == (1, 4)


def test_inverted_boxes_are_refused(tmp_path):
    xywh = [np.array([[1, 2, 3, 4], [30, 20, 10, 5]], np.float32), np.array([[1, 2, 3, 4]], np.float32)]
    assert "proposal 1 = [30 20 10 5]" in raises(dump(tmp_path / "mm.pkl", xywh), "000005")


def test_mat_without_boxes_variable(tmp_path):
    savemat(tmp_path / "nb.mat", {"images": cell(IDS), "all_boxes": np.zeros((2, 4))})
    assert "no 'boxes'" in raises(tmp_path / "nb.mat") and "all_boxes" in raises(tmp_path / "nb.mat")
    savemat(tmp_path / "num.mat", {"boxes": np.zeros((2, 4))})
    assert "not a cell array" in raises(tmp_path / "num.mat")


def test_bbox_mode_other_than_xyxy_abs_is_refused_with_the_conversion(tmp_path, proposals):
    write_proposals(tmp_path / "d2.pkl", proposals)
    data = pickle.loads((tmp_path / "d2.pkl").read_bytes())
    data["bbox_mode"] = 1  # XYWH_ABS
    with pytest.raises(CvtoolError, match="XYXY_ABS") as error:
        read_proposals(dump(tmp_path / "xywh.pkl", data), IDS, SIZES)
    assert str(tmp_path / "xywh.pkl") in str(error.value) and "BoxMode.convert" in error.value.fix


class Exploit:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return Path.touch, (self.target,)


@pytest.mark.parametrize("kind", ["garbage", "code", "string", "no ids"])
def test_garbage_and_foreign_pickles_are_refused_without_running_code(tmp_path, kind):
    content = {"garbage": b"\x00garbage bytes", "code": pickle.dumps({"ids": IDS, "boxes": Exploit(tmp_path / "ran")}),
               "string": pickle.dumps("a string"), "no ids": pickle.dumps({"boxes": []})}[kind]
    (tmp_path / "bad.pkl").write_bytes(content)
    assert "not a" in raises(tmp_path / "bad.pkl")
    assert not (tmp_path / "ran").exists()


def test_garbage_mat_and_malformed_entries(tmp_path):
    (tmp_path / "bad.mat").write_bytes(b"MATLAB 5.0 MAT-file, but truncated")
    assert "not a readable MATLAB" in raises(tmp_path / "bad.mat")
    assert "shape" in raises(dump(tmp_path / "three.pkl", [np.zeros((1, 3)), np.zeros((1, 4))]), "000005")
    nan = [np.array([[1, 2, 3, np.nan]]), np.zeros((1, 4))]
    assert "non-finite" in raises(dump(tmp_path / "nan.pkl", nan), "000005")
    with pytest.raises(CvtoolError, match="not found"):
        read_proposals(tmp_path / "missing.mat", IDS, SIZES)


def test_modules_work_without_torch(tmp_path):
    script = f"""
import sys
import numpy as np
from pathlib import Path
from cvtool.data.proposal_files import ProposalSet, read_proposals, write_proposals
from cvtool.metrics.proposals import proposal_recall
from cvtool.viz.proposal_plots import draw_proposals, plot_recall_curves
out = Path({str(tmp_path)!r})
boxes = [np.array([[0, 0, 10, 10]], np.float32)]
for name in ("p.mat", "p.pkl"):
    assert read_proposals(write_proposals(out / name, ProposalSet(["a"], boxes, [None], "t")), ["a"], [None]).ids
assert proposal_recall(boxes, boxes, counts=(1,))["AR"] == {{"1": 1.0}}
plot_recall_curves({{"m": {{"recall@0.5": [1.0], "recall@0.7": [1.0], "AR": [1.0]}}}}, [1], out / "r.png")
draw_proposals(np.zeros((16, 16, 3), np.uint8), boxes[0], out / "d.png")
assert "torch" not in sys.modules
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=without_torch(tmp_path),
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "r.png").is_file() and (tmp_path / "d.png").is_file()
