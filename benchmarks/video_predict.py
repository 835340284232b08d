"""`cvtool predict` on a video: frames/s with the annotated video written and without it (video.write_video=false),
measured in one run on this machine, with their ratio. Each model is first trained for one short epoch through the
Python API (speed does not depend on how well it learned); the clip is a generated H.264 640x480 video.

    python benchmarks/video_predict.py [--models shapes_cnn,yolo] [--frames 120] [--repeats 2]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import av
import numpy as np

from cvtool import predict, train

# model -> the task it belongs to and the overrides of its one short training epoch
MODELS = {
    "shapes_cnn": ("classification", ["data.limit=256"]),
    "yolo": ("detection", ["data.limit=32", "data.batch_size=8"]),
    "faster_rcnn_mobilenet_320": ("detection", ["data.limit=16", "data.batch_size=4"]),
}


def write_clip(path: Path, frames: int, width: int = 640, height: int = 480, fps: int = 25) -> None:
    """A moving square and disc on a noisy background, encoded as H.264 (mpeg4 where libx264 is missing)."""
    rng = np.random.default_rng(0)
    background = rng.integers(60, 200, (height, width, 3), dtype=np.uint8)
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = background.copy()
            x = 40 + (i * 4) % (width - 200)
            image[150:270, x:x + 120] = (220, 40, 40)
            yy, xx = np.ogrid[:height, :width]
            image[(yy - 330) ** 2 + (xx - (width - x - 80)) ** 2 < 60 ** 2] = (40, 40, 220)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="shapes_cnn,yolo")
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each setting; the best is shown")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = root / "clip.mp4"
        write_clip(clip, args.frames)
        common = {"paths.runs": str(root / "runs"), "hardware": "cpu", "plots": False, "logger": []}
        rows = []
        for name in args.models.split(","):
            task, overrides = MODELS[name]
            trained = train([f"task={task}", f"model={name}", "trainer.epochs=1", *overrides], **common)
            ckpt = Path(trained["run_dir"]) / "checkpoints" / "last.pt"
            speed = {}
            for write in (True, False):
                runs = [predict(ckpt=str(ckpt), source=str(clip), video={"write_video": write}, **common)
                        for _ in range(args.repeats)]
                speed[write] = max(r["frames_per_s"] for r in runs)
            rows.append((name, speed[True], speed[False]))
    print(f"\n{args.frames} frames of 640x480 H.264, fp32, best of {args.repeats}")
    print(f"{'model':<28}{'with annotated.mp4':>20}{'write_video=false':>20}{'ratio':>8}")
    for name, with_video, without in rows:
        print(f"{name:<28}{with_video:>14.1f} fr/s{without:>14.1f} fr/s{with_video / without:>8.2f}")


if __name__ == "__main__":
    main()
