"""`cvtool predict source=VIDEO`: video files in two containers give the predictions of their frames as image files,
an annotated video with one frame per prediction and frames.jsonl; stride/max_frames/Ctrl-C keep valid outputs;
segmentation videos; an unreadable file, an unreachable stream and a missing webcam are one-line errors."""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from conftest import TINY, only_run_dir
from PIL import Image
from typer.testing import CliRunner

from cvtool.cli.app import app
from cvtool.commands import predict, train
from cvtool.data.shapes import generate_devkit
from cvtool.data.video import open_video, video_source
from cvtool.errors import CvtoolError, ExitRequest

FRAMES = 24


def write_clip(path: Path, images: list[np.ndarray], codec: str, fps: int = 25) -> Path:
    """A clip of H×W×3 uint8 images, nearly lossless (small quantiser)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.qmax = 2
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def decoded(path: Path) -> list[av.VideoFrame]:
    with av.open(str(path)) as container:
        return list(container.decode(video=0))


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.fixture(scope="module")
def classifier(datasets_root, tmp_path_factory) -> Path:
    """A classifier checkpoint trained for one short epoch on the tiny shapes data."""
    runs = tmp_path_factory.mktemp("video_runs")
    train.main([f"paths.datasets={datasets_root}", *(f"{k}={v}" for k, v in TINY.items()), "data.limit=60",
                "data.batch_size=30", "data.workers=0", "trainer.epochs=1", "hardware=cpu", "plots=false",
                f"paths.runs={runs}"])
    return next(runs.rglob("best.pt"))


@pytest.fixture(scope="module")
def shapes_frames(datasets_root) -> list[np.ndarray]:
    files = sorted((datasets_root / "shapes" / "classification" / "val").rglob("*.png"))[:FRAMES]
    return [np.asarray(Image.open(f).convert("RGB")) for f in files]


def run_predict(ckpt: Path, source, runs: Path, *extra: str) -> tuple[dict, Path]:
    result, = predict.main([f"ckpt={ckpt}", f"source={source}", f"paths.runs={runs}", "hardware=cpu", *extra])
    return result, Path(result["run_dir"])


def test_video_frames_get_the_predictions_of_the_same_frames_as_image_files(classifier, shapes_frames, tmp_path):
    clip = write_clip(tmp_path / "clip.mp4", shapes_frames, "mpeg4")
    result, out = run_predict(classifier, clip, tmp_path / "runs", "video.batch=5")
    assert result["num_frames"] == FRAMES and result["frames_per_s"] > 0

    lines = read_lines(out / "frames.jsonl")
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["time"] for line in lines] == pytest.approx([i / 25 for i in range(FRAMES)])
    annotated = decoded(out / "annotated.mp4")
    assert len(annotated) == FRAMES and (annotated[0].width, annotated[0].height) == (256, 256)  # upscaled to 256

    # the same decoded frames as PNG files through image predict: the same top-5 classes and probabilities
    frames_dir = tmp_path / "frames"
    frames_dir.mkdir()
    for i, frame in enumerate(decoded(clip)):
        frame.to_image().save(frames_dir / f"{i:04d}.png")
    _, image_out = run_predict(classifier, frames_dir, tmp_path / "image_runs", "overlays=0")
    logits = np.load(image_out / "logits.npy")
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    names = torch.load(classifier, weights_only=True)["class_names"]
    for line, row in zip(lines, probs):
        assert line["classes"][0] == names[int(row.argmax())]
        assert line["probs"] == pytest.approx(sorted(row, reverse=True), abs=1e-4)


def test_stride_and_max_frames_keep_every_nth_frame_at_its_own_time(classifier, shapes_frames, tmp_path):
    clip = write_clip(tmp_path / "clip.mkv", shapes_frames, "libx264", fps=10)
    result, out = run_predict(classifier, clip, tmp_path / "runs", "video.stride=3", "video.max_frames=5",
                              "video.batch=2")
    lines = read_lines(out / "frames.jsonl")
    assert [line["frame"] for line in lines] == [0, 3, 6, 9, 12] and result["num_frames"] == 5
    annotated = decoded(out / "annotated.mp4")
    assert [f.time for f in annotated] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.2])  # real time kept


def test_ctrl_c_finishes_the_video_and_keeps_the_frames_so_far(classifier, shapes_frames, tmp_path, monkeypatch):
    from cvtool.commands import predict_video

    real, calls = predict_video.predict_frames, []

    def interrupted_on_third_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(predict_video, "predict_frames", interrupted_on_third_batch)
    clip = write_clip(tmp_path / "clip.mp4", shapes_frames, "mpeg4")
    with pytest.raises(ExitRequest, match="interrupted by Ctrl-C after 8 frames") as stop:
        run_predict(classifier, clip, tmp_path / "runs", "video.batch=4")
    assert stop.value.code == 130
    out = only_run_dir(tmp_path / "runs" / "classification" / "predict")
    assert len(read_lines(out / "frames.jsonl")) == 8 and len(decoded(out / "annotated.mp4")) == 8


def test_segmentation_video_gives_class_fractions_and_an_overlay_video(tmp_path):
    devkit = generate_devkit(tmp_path / "devkit", num_train=6, num_val=2, image_size=96, min_objects=1,
                             max_objects=2, min_size=12, max_size=40, seed=0)
    runs = tmp_path / "runs"
    train.main(["task=segmentation", "model=unet", "model.width=4", "model.depth=2", f"dataset.root={devkit}",
                "dataset.synth=null", "data.batch_size=3", "data.workers=0", "trainer.epochs=1", "hardware=cpu",
                "plots=false", f"paths.runs={runs}"])
    images = [np.asarray(Image.open(f).convert("RGB")) for f in sorted((devkit / "JPEGImages").glob("*"))[:6]]
    clip = write_clip(tmp_path / "clip.mp4", images, "libx264")
    result, out = run_predict(next(runs.rglob("best.pt")), clip, tmp_path / "predict", "task=segmentation")
    lines = read_lines(out / "frames.jsonl")
    assert len(lines) == 6 == len(decoded(out / "annotated.mp4"))
    for line in lines:
        assert list(line["fractions"]) == ["background", "circle", "square", "triangle", "star", "cross"]
        assert sum(line["fractions"].values()) == pytest.approx(1.0)


def one_line_error(*args: str) -> str:
    """Run the CLI: exit code 2 and a single `error:` line, which is returned."""
    result = CliRunner().invoke(app, ["predict", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_unreadable_video_is_one_line_naming_the_file(classifier, tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    line = one_line_error(f"ckpt={classifier}", f"source={garbage}", f"paths.runs={tmp_path}", "hardware=cpu")
    assert "video file is corrupt or unreadable" in line and str(garbage) in line


def test_unreachable_stream_is_one_line_within_seconds(classifier, tmp_path):
    line = one_line_error(f"ckpt={classifier}", "source=rtsp://127.0.0.1:9/x", f"paths.runs={tmp_path}",
                          "hardware=cpu")
    assert "cannot open the stream" in line and "rtsp://127.0.0.1:9/x" in line
    with socket.socket() as silent:  # accepts the connection, never answers: the timeout must end the wait
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        began = time.perf_counter()
        with pytest.raises(CvtoolError, match="cannot open the stream"):
            run_predict(classifier, f"rtsp://127.0.0.1:{silent.getsockname()[1]}/live", tmp_path,
                        "video.timeout_s=0.5")
        assert time.perf_counter() - began < 5


@pytest.mark.skipif(sys.platform != "linux", reason="webcam indices are /dev/videoN on Linux")
def test_missing_webcam_is_an_error_naming_its_device(classifier, tmp_path):
    with pytest.raises(CvtoolError, match="cannot open the webcam.*/dev/video63"):
        run_predict(classifier, 63, tmp_path)


def test_missing_pyav_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(CvtoolError, match=r"pip install 'cvtool\[video\]'"):
        open_video(video_source("clip.mp4"), 1.0).__enter__()


@pytest.mark.parametrize(("key", "value"), [("batch", 0), ("stride", -1), ("max_frames", "abc")])
def test_video_counts_must_be_positive_integers(key, value):
    from omegaconf import OmegaConf

    from cvtool.commands.predict_video import check_options

    options = OmegaConf.create({"batch": 8, "stride": 1, "max_frames": None} | {key: value})
    with pytest.raises(CvtoolError, match=f"video.{key} must be a positive integer"):
        check_options(options)
