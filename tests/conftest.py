"""Shared fixtures: a tiny shapes dataset generated once, and helpers that run commands in-process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")

TINY = {"dataset.synth.num_train": 180, "dataset.synth.num_val": 60}


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory) -> Path:
    """A datasets/ root holding a tiny shapes ImageFolder (same generator and reader as the default)."""
    from cvtool.data.shapes import ensure_shapes

    root = tmp_path_factory.mktemp("datasets")
    ensure_shapes("classification", root / "shapes" / "classification", num_train=TINY["dataset.synth.num_train"],
                  num_val=TINY["dataset.synth.num_val"], image_size=64, min_size=12, max_size=48, seed=0)
    return root


@pytest.fixture
def tiny(datasets_root, tmp_path) -> list[str]:
    """Overrides for a fast classification run on the tiny data, with runs under tmp_path."""
    return [f"paths.datasets={datasets_root}", f"paths.runs={tmp_path / 'runs'}",
            *(f"{k}={v}" for k, v in TINY.items()), "data.batch_size=30", "data.workers=0",
            "trainer.epochs=2", "trainer.log_every=2", "logger=[tensorboard]", "hardware=cpu"]


def only_run_dir(root: Path) -> Path:
    dirs = [p for p in root.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture
def hub_dir(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache whose downloads fail as they do without network."""


    def no_network(url, *args, **kwargs):
        raise URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "hub"


def without_torch(tmp_path: Path) -> dict[str, str]:
    """The environment of a subprocess in which importing torch or torchvision fails (stored evaluations)."""
    poison = tmp_path / "poison"
    for name in ("torch", "torchvision"):
        (poison / name).mkdir(parents=True, exist_ok=True)
        (poison / name / "__init__.py").write_text(f"raise ImportError('{name} imported by a torch-free path')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison), str(Path.cwd())])}


def png(path: Path):
    """The PNG at `path`, decoded, after checking it was written atomically (no .tmp file left beside it)."""
    from PIL import Image

    image = Image.open(path)
    assert image.format == "PNG"
    image.load()
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
    return image


def pixels_of(image, colour: tuple[int, int, int]) -> int:
    """How many pixels of `image` have exactly `colour`."""
    import numpy as np

    return int((np.asarray(image.convert("RGB")) == colour).all(axis=2).sum())


def forward_at(model, side: int) -> None:
    """A train-mode forward with a batch of 2, then an eval-mode one with a single image (min_size probes)."""
    import torch

    with torch.no_grad():
        model.train()(torch.randn(2, 3, side, side))
        model.eval()(torch.randn(1, 3, side, side))


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread beats two that wait for each other (on a busy machine, by far). Modules use
    it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def assert_detections_inside(detections: list[dict], images: list, most: int, num_classes: int) -> None:
    """Eval-mode detector outputs: one dict per image, 1..`most` boxes inside their image, int64 labels of the
    classes, scores sorted best first."""
    assert len(detections) == len(images)
    for det, image in zip(detections, images):
        height, width = image.shape[-2:]
        boxes, scores, labels = det["boxes"], det["scores"], det["labels"]
        assert 0 < len(boxes) <= most and boxes.shape == (len(scores), 4) and labels.dtype == torch.int64
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert ((labels >= 0) & (labels < num_classes)).all() and (scores[:-1] >= scores[1:]).all()
