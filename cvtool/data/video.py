"""Video in and out through PyAV (FFmpeg): video files, webcams and RTSP/HTTP streams as uint8 RGB frames with
their timestamps; annotated frames encoded at their own timestamps."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from cvtool.errors import CvtoolError

VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".ts", ".wmv",
                              ".flv"})
STREAM_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "http", "https"})
INSTALL_FIX = "pip install 'cvtool[video]'"
TIME_BASE = Fraction(1, 1000)  # output timestamps in ms (MPEG-4 Part 2 allows time bases up to 1/65535)


@dataclass(frozen=True)
class VideoSource:
    """What `source=` names: `url` is what FFmpeg opens, with input device `format` for webcams."""

    url: str
    kind: str  # file | webcam | stream
    format: str | None = None

    @property
    def live(self) -> bool:
        """A webcam or stream: no known length, and a read that may block (so it gets a timeout)."""
        return self.kind != "file"

    def describe(self) -> str:
        return {"file": "video file", "webcam": "webcam", "stream": "stream"}[self.kind]


def video_source(source) -> VideoSource | None:
    """The video `source` names (a video file, a webcam index or device, a stream URL); None for images."""
    text = str(source)
    scheme = text.partition("://")[0].lower() if "://" in text else ""
    if scheme in STREAM_SCHEMES:
        return VideoSource(text, "stream")
    if text.isdigit() and not Path(text).exists():
        return webcam(int(text))
    if text.startswith("/dev/video"):
        return VideoSource(text, "webcam", "v4l2")
    if text.startswith("video="):
        return VideoSource(text, "webcam", "dshow")
    return VideoSource(text, "file") if Path(text).suffix.lower() in VIDEO_EXTENSIONS else None


def webcam(index: int) -> VideoSource:
    """Camera `index` through the platform's capture device: Linux /dev/videoN (v4l2), macOS AVFoundation.
    DirectShow (Windows) opens cameras by name only."""
    if sys.platform == "darwin":
        return VideoSource(f"{index}:none", "webcam", "avfoundation")
    if sys.platform == "win32":
        raise CvtoolError(f"DirectShow cannot open camera {index} by number", where=f"source={index}",
                          fix="pass 'source=\"video=CAMERA NAME\"' (`ffmpeg -list_devices true -f dshow -i dummy` "
                              "lists the names)")
    return VideoSource(f"/dev/video{index}", "webcam", "v4l2")


def import_av():
    """PyAV, or a CvtoolError saying how to install it."""
    try:
        import av
    except ImportError as exc:
        raise CvtoolError("video input needs PyAV, which is not installed", where="source", fix=INSTALL_FIX) from exc
    return av


def _open_problem(source: VideoSource, reason: str) -> CvtoolError:
    fixes = {"file": "check that it plays (ffprobe FILE), or re-encode it",
             "webcam": "check the camera is connected and free (Linux: ls /dev/video*; macOS: ffmpeg -f avfoundation "
                       "-list_devices true -i '')",
             "stream": "check the URL and that the server is up and reachable; video.timeout_s= waits longer"}
    what = "video file is corrupt or unreadable" if source.kind == "file" else f"cannot open the {source.describe()}"
    return CvtoolError(f"{what}: {reason}", where=source.url, fix=fixes[source.kind])


@contextmanager
def open_video(source: VideoSource, timeout_s: float) -> Iterator[VideoReader]:
    """The opened source; a live one waits at most `timeout_s` to open and for each read."""
    av = import_av()
    if source.kind == "file" and not Path(source.url).is_file():
        raise CvtoolError("source not found", where=source.url, fix="pass source=VIDEO_FILE, a webcam index or a URL")
    if source.format and not any(source.format in name.split(",") for name in av.formats_available):
        raise CvtoolError(f"this PyAV build has no {source.format} input for webcams", where=source.url,
                          fix="install a PyAV/FFmpeg build with device support, or stream the camera over RTSP")
    try:
        container = av.open(source.url, format=source.format, timeout=timeout_s if source.live else None)
    except (av.error.FFmpegError, OSError) as exc:
        raise _open_problem(source, getattr(exc, "strerror", None) or str(exc)) from exc
    try:
        yield VideoReader(container, source)
    finally:
        container.close()


class VideoReader:
    """The first video stream of an opened container: `fps`, `num_frames` (None when unknown), `frames()`."""

    def __init__(self, container, source: VideoSource):
        if not container.streams.video:
            raise _open_problem(source, "it has no video stream")
        self.container, self.source = container, source
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"  # FFmpeg's frame threads
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.num_frames = self._count()

    def _count(self) -> int | None:
        """Frames in a file: from its header, else estimated from its duration (e.g. Matroska); None when live."""
        if self.source.live:
            return None
        if self.stream.frames:
            return self.stream.frames
        duration = self.container.duration  # microseconds
        return round(duration / 1e6 * self.fps) if duration and self.fps else None

    def frames(self) -> Iterator[tuple[float | None, torch.Tensor]]:
        """(timestamp in s or None, uint8 RGB C×H×W) per decoded frame; damage that stops decoding is a
        CvtoolError naming the source."""
        av = import_av()
        count = 0
        try:
            for frame in self.container.decode(self.stream):
                count += 1
                yield frame.time, torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
        except av.error.FFmpegError as exc:
            raise CvtoolError(f"the {self.source.describe()} stopped decoding after {count} frames: "
                              f"{exc.strerror or exc}", where=self.source.url,
                              fix="check or re-encode the file (results up to here are written)") from exc


def pick_codec(name: str) -> str:
    """`name`, where auto = H.264 (libx264) when this FFmpeg build has it, else MPEG-4 Part 2."""
    av = import_av()
    candidates = ["libx264", "mpeg4"] if name == "auto" else [name]
    for candidate in candidates:
        try:
            av.codec.Codec(candidate, "w")
            return candidate
        except ValueError:  # UnknownCodecError
            continue
    raise CvtoolError(f"this FFmpeg build cannot encode {name}", where="video.codec",
                      fix="use video.codec=auto, or a video encoder that `python -c \"import av; "
                          "print(av.codecs_available)\"` lists")


class VideoWriter:
    """Encodes RGB frames at their own timestamps (a variable frame rate: frames skipped by a stride or dropped by
    a slow live run keep real time) into an MP4; opened on the first frame, whose size fixes the video's."""

    def __init__(self, path: Path, codec: str):
        self.path, self.codec = Path(path), pick_codec(codec)
        self.container = self.stream = None
        self.frames, self._last_pts = 0, -1

    def write(self, image: np.ndarray, time_s: float) -> None:
        """Append an H×W×3 uint8 frame shown at `time_s` seconds from the start."""
        av = import_av()
        height, width = image.shape[0] + image.shape[0] % 2, image.shape[1] + image.shape[1] % 2
        if self.container is None:
            self._open(width, height)
        # 4:2:0 chroma needs even sides: pad by an edge row/column; a stream that changes its resolution midway
        # is cropped or padded to its first frame's size
        image = image[:self.stream.height, :self.stream.width]
        image = np.pad(image, ((0, self.stream.height - image.shape[0]), (0, self.stream.width - image.shape[1]),
                               (0, 0)), mode="edge")
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
        self._last_pts = max(self._last_pts + 1, round(time_s / TIME_BASE))
        frame.pts, frame.time_base = self._last_pts, TIME_BASE
        self.container.mux(self.stream.encode(frame))
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        av = import_av()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(self.path), "w")
        self.stream = self.container.add_stream(self.codec)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.stream.codec_context.time_base = TIME_BASE
        if self.codec == "mpeg4":  # its default 200 kb/s blurs labels; cap the quantiser instead
            self.stream.codec_context.qmax = 4

    def close(self) -> None:
        """Flush the encoder and finish the container (a valid file however the run ended)."""
        if self.container is not None:
            self.container.mux(self.stream.encode(None))
            self.container.close()
            self.container = None
