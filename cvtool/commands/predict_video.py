"""`cvtool predict source=VIDEO|WEBCAM|URL`: the model over a video's frames in batches, with the same
preprocessing as image predict; writes the annotated video (annotated.mp4) and one JSON line per frame
(frames.jsonl), both kept consistent when a stream ends, decoding fails or Ctrl-C stops the run."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich import get_console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

from cvtool.data.image_io import rgb_to_gray  # grey frames as grey image files are read
from cvtool.data.video import VideoReader, VideoSource, VideoWriter, open_video
from cvtool.engine.hardware import Hardware
from cvtool.engine.inference import OutputCollector, autocast
from cvtool.errors import CvtoolError, ExitRequest

from . import components as C

log = logging.getLogger("cvtool.predict")


class FramesPerSecond(ProgressColumn):
    """Frames per second over rich's recent-speed window."""

    def render(self, task) -> Text:
        return Text(f"{task.speed or 0.0:.1f} frames/s", style="progress.data.speed")


def check_options(video: DictConfig) -> None:
    """video.batch and video.stride are positive integers; so is video.max_frames, or null."""
    for key in ("batch", "stride", "max_frames"):
        value = video[key]
        if key == "max_frames" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CvtoolError(f"video.{key} must be a positive integer, got {value!r}", where=f"video.{key}",
                              fix=f"e.g. video.{key}=1" + (" (or null: no limit)" if key == "max_frames" else ""))


def sampled(reader: VideoReader, stride: int, max_frames: int | None) -> Iterator[tuple[int, float, torch.Tensor]]:
    """(frame index, timestamp in s, frame) of every `stride`-th frame, at most `max_frames` of them. Frames
    without a timestamp get index / fps, or (live, rate unknown) the time since the first one arrived."""
    start, kept = time.perf_counter(), 0
    for index, (stamp, frame) in enumerate(reader.frames()):
        if index % stride:
            continue
        if stamp is None:
            stamp = index / reader.fps if reader.fps else time.perf_counter() - start
        yield index, stamp, frame
        kept += 1
        if kept == max_frames:
            return


def batches(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


@torch.inference_mode()
def predict_frames(model: torch.nn.Module, task, frames: list[torch.Tensor], transform, hardware: Hardware,
                   classes: list[str]) -> list[tuple[dict, object]]:
    """(JSON record, annotated PIL image) per frame, from one forward pass over the batch."""
    raw = task.frame_batch(frames, transform)
    batch = task.preprocess(raw, hardware)
    with autocast(hardware) if task.amp_inference else contextlib.nullcontext():
        outputs = task.inference_step(model, batch)
    collector = OutputCollector()
    collector.reset()
    collector.process(batch, outputs)
    return task.frame_results(frames, raw, collector.evaluate(), classes)


def expected_frames(reader: VideoReader, video: DictConfig) -> int | None:
    """How many frames the run will predict, where known (a file's length, video.max_frames)."""
    total = -(-reader.num_frames // video.stride) if reader.num_frames else None
    return min((n for n in (total, video.max_frames) if n), default=None)


def progress_bar() -> Progress:
    """A bar with frames/s (indeterminate for live sources), shown only on a terminal."""
    console = get_console()
    return Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"), FramesPerSecond(),
                    TimeElapsedColumn(), console=console, transient=True, disable=not console.is_terminal)


class FrameOutputs:
    """frames.jsonl and (video.write_video) annotated.mp4, appended frame by frame; `close` leaves both valid."""

    def __init__(self, run_dir: Path, video: DictConfig):
        self.jsonl, self.file = run_dir / "frames.jsonl", (run_dir / "frames.jsonl").open("w")
        self.writer = VideoWriter(run_dir / "annotated.mp4", video.codec) if video.write_video else None
        self.first: float | None = None  # the first frame's timestamp: the video's time 0
        self.count = 0

    def add(self, index: int, stamp: float, record: dict, picture) -> None:
        self.file.write(json.dumps({"frame": index, "time": stamp, **record}) + "\n")
        self.first = stamp if self.first is None else self.first
        if self.writer:
            self.writer.write(np.asarray(picture), stamp - self.first)
        self.count += 1

    def paths(self) -> list[str]:
        video = [self.writer.path] if self.writer and self.writer.frames else []
        return [str(p) for p in (*video, self.jsonl)]

    def close(self) -> None:
        self.file.close()
        if self.writer:
            self.writer.close()


def predict_video(cfg: DictConfig, source: VideoSource, model: torch.nn.Module, task, classes: list[str],
                  hardware: Hardware, run_dir: Path) -> dict:
    """Predict the frames of `source` in batches of video.batch into `run_dir`; Ctrl-C ends the run cleanly."""
    video = cfg.video
    check_options(video)
    transform = C.transforms(cfg, "eval_transforms")
    interrupted = False
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(open_video(source, video.timeout_s))
        outputs = stack.enter_context(contextlib.closing(FrameOutputs(run_dir, video)))
        progress = stack.enter_context(progress_bar())
        bar = progress.add_task("predict", total=expected_frames(reader, video))
        log.info("predicting %s (%s fps, %s frames)", source.url, f"{reader.fps:.2f}" if reader.fps else "unknown",
                 reader.num_frames or "unknown")
        began = time.perf_counter()
        try:
            for chunk in batches(sampled(reader, video.stride, video.max_frames), video.batch):
                frames = [rgb_to_gray(frame) if cfg.dataset.channels == 1 else frame for _, _, frame in chunk]
                predicted = predict_frames(model, task, frames, transform, hardware, classes)
                for (index, stamp, _), (record, picture) in zip(chunk, predicted):
                    outputs.add(index, stamp, record, picture)
                outputs.file.flush()
                progress.advance(bar, len(chunk))
        except KeyboardInterrupt:
            interrupted = True
    rate = outputs.count / max(time.perf_counter() - began, 1e-9)
    log.info("%d frames predicted (%.1f frames/s): %s", outputs.count, rate, ", ".join(outputs.paths()))
    if interrupted:
        raise ExitRequest(f"interrupted by Ctrl-C after {outputs.count} frames; written so far: "
                          f"{', '.join(outputs.paths())}", 130)
    return {"num_frames": outputs.count, "frames_per_s": rate, "run_dir": str(run_dir), "files": outputs.paths()}
