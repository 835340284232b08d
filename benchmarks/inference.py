"""Inference speed of the exported formats vs eager PyTorch, measured in one run on this machine's CPU: latency at
batch 1 (median of --repeats calls) and throughput at batch 32 (images/s), for eager, TorchScript, ONNX Runtime
and torch.export, printed with ratios to eager (> 1 = faster). Untrained weights (speed does not depend on
them); every file is exported through `cvtool.export` and verified against eager first (a row marked
"[differs]" failed that check: an untrained detector's near-equal scores make its detections order-sensitive).

    python benchmarks/inference.py [--models resnet18,resnet50,faster_rcnn_mobilenet,unet] [--repeats 10]

torchvision's detectors take one image per call once exported (their graphs are single-image), so their batch-32
figure is 32 calls; eager runs them as one list of 32. torch.export cannot capture them and falls back to
TorchScript (shown as such).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

from cvtool.commands import components as C
from cvtool.commands.export import verify
from cvtool.config import runner
from cvtool.exporting.formats import load_runner, write
from cvtool.exporting.graphs import export_graph

# model -> (task, overrides, input H = W)
MODELS = {
    "resnet18": ("classification", [], 224),
    "resnet50": ("classification", [], 224),
    "faster_rcnn_mobilenet": ("detection", ["dataset.detector.min_size=320", "dataset.detector.max_size=320"], 320),
    "unet": ("segmentation", [], 256),
}
FORMATS = ("torchscript", "onnx", "torch_export")


def build(name: str):
    task_name, extra, size = MODELS[name]
    cfg = runner.compose("export", [f"task={task_name}", f"model={name}", f"input_size={size}", *extra])
    task = C.task_from(cfg)
    model = task.build_model(C.plain(cfg.model) | {"weights": None}, 5).eval()
    return cfg, export_graph(model, task_name), size


def inputs(graph, cfg, size: int, batch: int):
    """What one call of the exported graph takes, and how many such calls make `batch` images."""
    if graph.batched:
        return torch.rand(batch, cfg.dataset.channels, size, size), 1
    return torch.rand(cfg.dataset.channels, size, size), batch


def timed(call, x, calls: int, repeats: int) -> list[float]:
    call(x)  # warm-up (allocations, lazy initialisation, ORT's first run)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            call(x)
        times.append(time.perf_counter() - start)
    return times


def eager_call(graph, batch_calls: int):
    if graph.batched or batch_calls == 1:
        return graph.module
    detector = graph.module.model  # eager torchvision detectors take the whole list at once
    return lambda image: detector([image] * batch_calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        cfg, graph, size = build(name)
        one, _ = inputs(graph, cfg, size, 1)
        many, calls = inputs(graph, cfg, size, args.batch)
        example = one if not graph.batched else torch.cat([one, one])
        with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
            callers = {"eager": (graph.module, eager_call(graph, calls), 1)}
            for fmt in FORMATS:
                with torch.inference_mode(False):
                    written = write(graph, example, fmt, Path(tmp) / f"{name}_{fmt}", opset=18, dynamic=True)
                    checks = verify(graph, written.path, [one], cfg)
                run = load_runner(written.path, torch.device("cpu"))
                label = fmt if written.format == fmt else f"{fmt} ({written.format})"
                if not all(c.passed for c in checks):  # untrained detectors: near-equal scores reorder
                    label += " [differs]"
                callers[label] = (run, run, calls)
            base = None
            for label, (single, batched, n) in callers.items():
                latency = statistics.median(timed(single, one, 1, args.repeats))
                throughput = args.batch / min(timed(batched, many, n, max(2, args.repeats // 4)))
                base = base or (latency, throughput)
                rows.append((name, label, latency * 1000, base[0] / latency, throughput, throughput / base[1]))
                print(f"{name:22s} {label:28s} latency {latency * 1000:8.2f} ms ({base[0] / latency:4.2f}x)   "
                      f"batch {args.batch}: {throughput:8.1f} img/s ({throughput / base[1]:4.2f}x)", flush=True)
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; ratios are to eager in the same run")


if __name__ == "__main__":
    main()
