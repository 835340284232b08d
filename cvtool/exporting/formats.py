"""One writer per format, with the fallbacks each takes, and one runner per format that executes a written file.

ONNX: the torch.export-based exporter (`dynamo=True`) first, the TorchScript-based one where a model has
data-dependent shapes. TorchScript: scripting first (keeps shape-dependent code general), tracing where a model
does not script. torch.export: an ExportedProgram (`.pt2`), or TorchScript where torch.export cannot capture the
model. Every fallback is recorded with its reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cvtool.errors import CvtoolError

from .graphs import Graph

log = logging.getLogger("cvtool.export")
warnings.filterwarnings("ignore", message=r".* always returns a \(Losses, Detections\) tuple in scripting")

SUFFIX = {"onnx": ".onnx", "torchscript": ".pt", "torch_export": ".pt2"}
DYNAMO_MIN_OPSET = 18  # torch.onnx's torch.export-based exporter writes no older opset
FORMAT_OF_SUFFIX = {suffix: fmt for fmt, suffix in SUFFIX.items()}


@dataclass
class Written:
    path: Path
    format: str  # the format actually written (torch_export may fall back to torchscript)
    exporter: str  # the path that wrote it, e.g. "torch.onnx dynamo, opset 18"
    notes: list[str] = field(default_factory=list)  # fallbacks taken, with their reasons


def _reason(exc: BaseException) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return text[:200]


@contextlib.contextmanager
def _quiet():
    """Exporters print progress, warn about every traced branch and log whole graphs when they fail; the summary
    and the fallback notes say what matters (with `hydra.verbose=cvtool` nothing is hidden)."""
    if logging.getLogger("cvtool").isEnabledFor(logging.DEBUG):
        yield
        return
    torch_log = logging.getLogger("torch")
    level, torch_log.level = torch_log.level, logging.CRITICAL
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        torch_log.setLevel(level)


def _onnx(graph: Graph, example: Tensor, path: Path, exporter: str, opset: int, dynamic: bool) -> None:
    names = {"input_names": [graph.input_name], "output_names": graph.outputs, "opset_version": opset}
    if exporter == "dynamo":
        shapes = ({axis: torch.export.Dim.AUTO for axis in graph.free_axes},) if dynamic else None
        torch.onnx.export(graph.module, (example,), str(path), dynamo=True, dynamic_shapes=shapes,
                          external_data=False, verbose=False, **names)
    else:
        axes = {graph.input_name: graph.free_axes, **graph.output_axes} if dynamic else None
        torch.onnx.export(graph.module, (example,), str(path), dynamo=False, dynamic_axes=axes, **names)


def _torchscript(graph: Graph, example: Tensor, path: Path, written: Written) -> None:
    try:
        module = torch.jit.script(graph.module)
        written.exporter = "torch.jit.script"
    except Exception as exc:  # noqa: BLE001 - any scripting failure falls back to tracing
        written.notes.append(f"torch.jit.script failed ({_reason(exc)}); traced instead")
        try:
            module = torch.jit.trace(graph.module, (example,), check_trace=False)
        except Exception as trace_exc:  # noqa: BLE001 - neither path handles the model: say so, write nothing
            raise CvtoolError(f"TorchScript cannot hold this model: scripting failed ({_reason(exc)}), tracing "
                              f"failed ({_reason(trace_exc)})", where="format=torchscript",
                              fix="try format=onnx or format=torch_export") from trace_exc
        written.exporter = "torch.jit.trace"
    torch.jit.save(module, str(path))


def onnx_opset(path: Path) -> int:
    """The default-domain opset a written ONNX file declares."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def write(graph: Graph, example: Tensor, fmt: str, path: Path, *, opset: int, dynamic: bool) -> Written:
    """Export `graph` to `path` (its suffix is fixed up to the format actually written)."""
    written = Written(path.with_suffix(SUFFIX[fmt]), fmt, "")
    with _quiet(), torch.no_grad():
        if fmt == "onnx":
            exporters = graph.onnx_exporters
            if exporters[0] != "dynamo":
                written.notes.append(f"{graph.note}: the torch.export-based ONNX exporter is skipped")
            elif opset < DYNAMO_MIN_OPSET:
                exporters = tuple(e for e in exporters if e != "dynamo")
                written.notes.append(f"the torch.export-based ONNX exporter writes opset {DYNAMO_MIN_OPSET} and "
                                     f"later; opset {opset} comes from the TorchScript-based one")
            for exporter in exporters:
                try:
                    _onnx(graph, example, written.path, exporter, opset, dynamic)
                    written.exporter = f"torch.onnx {'dynamo' if exporter == 'dynamo' else 'TorchScript-based'}, " \
                                       f"opset {onnx_opset(written.path)}"
                    return written
                except Exception as exc:  # noqa: BLE001 - try the next exporter, say why
                    written.notes.append(f"torch.onnx {exporter} exporter failed ({_reason(exc)})")
            raise CvtoolError(f"no ONNX exporter handles this model: {written.notes[-1]}", where="format=onnx",
                              fix="try format=torchscript")
        if fmt == "torch_export":
            if graph.kind == "detector":
                written.notes.append(f"{graph.note}; wrote TorchScript instead")
            else:
                try:
                    dims = ({axis: torch.export.Dim.AUTO for axis in graph.free_axes},) if dynamic else None
                    program = torch.export.export(graph.module, (example,), dynamic_shapes=dims, strict=False)
                    torch.export.save(program, str(written.path))
                    written.exporter = "torch.export"
                    return written
                except Exception as exc:  # noqa: BLE001 - fall back to TorchScript, say why
                    written.notes.append(f"torch.export failed ({_reason(exc)}); wrote TorchScript instead")
            written.format, written.path = "torchscript", written.path.with_suffix(SUFFIX["torchscript"])
        _torchscript(graph, example, written.path, written)
    return written


# --- running a written file ------------------------------------------------------------------------------------
class Runner:
    """Runs an exported file: one input tensor in, the graph's output tensors out (on the input's device)."""

    format = ""

    def __call__(self, image: Tensor) -> list[Tensor]:
        raise NotImplementedError


class OnnxRunner(Runner):
    format = "onnx"

    def __init__(self, path: Path, device: torch.device):
        import onnxruntime as ort

        wanted = ["CUDAExecutionProvider"] if device.type == "cuda" else []
        providers = [p for p in wanted if p in ort.get_available_providers()] + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = torch.get_num_threads()  # the threads torch would use (OMP_NUM_THREADS)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.providers = self.session.get_providers()

    def __call__(self, image: Tensor) -> list[Tensor]:
        outputs = self.session.run(None, {self.input: image.detach().float().cpu().numpy()})
        return [torch.from_numpy(o).to(image.device) for o in outputs]


class TorchRunner(Runner):
    """A TorchScript module (`torch.jit.load`) or an ExportedProgram's module (`torch.export.load`)."""

    def __init__(self, path: Path, device: torch.device, fmt: str):
        self.format = fmt
        with _quiet():
            if fmt == "torchscript":
                self.module = torch.jit.load(str(path), map_location=device)
            else:
                self.module = torch.export.load(str(path)).module()
                self.module.to(device)

    def __call__(self, image: Tensor) -> list[Tensor]:
        with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
            out = self.module(image.float())
        return list(out) if isinstance(out, (tuple, list)) else [out]


def format_of(path: Path) -> str:
    fmt = FORMAT_OF_SUFFIX.get(path.suffix)
    if fmt is None:
        raise CvtoolError(f"cannot tell the format of {path.name}", where=str(path),
                          fix="exported models end in .onnx (ONNX), .pt (TorchScript) or .pt2 (torch.export)")
    return fmt


def load_runner(path: Path, device: torch.device) -> Runner:
    """The runner for an exported file; a missing, truncated or foreign file is one clear error."""
    fmt = format_of(path)
    if not path.is_file():
        raise CvtoolError("exported model file not found", where=str(path), fix="check model_file=")
    try:
        return OnnxRunner(path, device) if fmt == "onnx" else TorchRunner(path, device, fmt)
    except Exception as exc:  # noqa: BLE001 - every reader's failure on a bad file becomes one line
        raise CvtoolError(f"cannot read the {fmt} model ({_reason(exc)})", where=str(path),
                          fix="the file is damaged or not an exported model; export it again with "
                              "`cvtool export ckpt=...`") from exc
