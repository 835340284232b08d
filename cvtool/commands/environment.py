"""`cvtool env`: what a bug report needs: versions of cvtool, Python, torch (CUDA, cuDNN) and the dependencies, and
the hardware (CPU model and flags, GPUs, whether bf16 autocast is fast). Aligned text, or one JSON object."""

from __future__ import annotations

import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import torch

from cvtool import __version__
from cvtool.engine.hardware import cpu_model, native_cpu_bf16

CPUINFO = Path("/proc/cpuinfo")  # Linux only; elsewhere the flags are "unknown"
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "bf16")
PACKAGES = ("torchvision", "hydra-core", "omegaconf", "typer", "numpy", "pillow", "pycocotools", "faster-coco-eval",
            "onnx", "onnxruntime", "captum", "av", "mlflow", "mkdocs", "submitit", "hydra-submitit-launcher")
ENV_VARS = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "WORLD_SIZE", "SLURM_JOB_ID")


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_flags() -> list[str] | None:
    """The relevant SIMD/matrix flags the kernel reports (x86 `flags`, ARM `Features`); None where unknown."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            found = set(line.partition(":")[2].split())
            return [flag for flag in CPU_FLAGS if flag in found]
    return None


def cudnn_version() -> str | None:
    if not torch.backends.cudnn.is_available():
        return None
    number = torch.backends.cudnn.version()  # 8907 = 8.9.7; from cuDNN 9 on 90100 = 9.1.0
    major, rest = divmod(number, 10000 if number >= 90000 else 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


def gpus() -> list[dict]:
    found = []
    for index in range(torch.cuda.device_count() if torch.cuda.is_available() else 0):
        props = torch.cuda.get_device_properties(index)
        found.append({"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}"})
    return found


def bf16_autocast() -> dict:
    """Whether bf16 autocast runs natively (fast) on this CPU and on the GPU; None where there is no GPU."""
    return {"cpu": native_cpu_bf16(), "cuda": torch.cuda.is_bf16_supported() if torch.cuda.is_available() else None}


def report() -> dict:
    return {
        "cvtool": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "platform": platform.platform(),
        "torch": torch.__version__, "torch_git": torch.version.git_version,
        "torch_debug": bool(torch.version.debug),
        "cuda_build": torch.version.cuda, "cuda_available": torch.cuda.is_available(), "cudnn": cudnn_version(),
        "gpus": gpus(), "mps_available": torch.backends.mps.is_available(),
        "cpu": cpu_model(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cpu_flags": cpu_flags(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_autocast_fast": bf16_autocast(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "env": {name: os.environ[name] for name in ENV_VARS if name in os.environ},
    }


def _yes(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def text(info: dict) -> str:
    """The report as aligned `name  value` lines."""
    gpu_lines = [f"{g['name']}, {g['memory_gib']} GiB, compute capability {g['capability']}" for g in info["gpus"]]
    flags = info["cpu_flags"]
    bf16 = info["bf16_autocast_fast"]
    rows = [
        ("cvtool", info["cvtool"]), ("python", info["python"]), ("platform", info["platform"]),
        ("torch", f"{info['torch']} (git {info['torch_git'][:10]}{', debug build' if info['torch_debug'] else ''})"),
        ("CUDA", f"{info['cuda_build']} (torch's build), available: {_yes(info['cuda_available'])}"
         if info["cuda_build"] else "not available (CPU-only torch build)"),
        ("cuDNN", info["cudnn"] or "not available"),
        *((f"GPU {i}", line) for i, line in enumerate(gpu_lines)), *([("GPU", "none")] if not gpu_lines else []),
        ("MPS", "available" if info["mps_available"] else "not available"),
        ("CPU", info["cpu"]),
        ("cores", f"{info['cpu_cores']} (torch threads: {info['torch_threads']})"),
        ("CPU flags", "unknown (no /proc/cpuinfo)" if flags is None else " ".join(flags) or "none of interest"),
        ("torch CPU kernels", info["cpu_capability"]),
        ("bf16 autocast", ("CPU: native (AVX512-BF16/AMX), hardware.amp=auto trains in bf16" if bf16["cpu"] else
                           "CPU: emulated (slow), hardware.amp=auto keeps fp32")
         + ("" if bf16["cuda"] is None else f"; GPU: {'native' if bf16['cuda'] else 'not supported (fp16 instead)'}")),
        *info["packages"].items(),
        *(info["env"].items()),
    ]
    width = max(len(name) for name, _ in rows) + 2
    return "\n".join(f"{name:<{width}}{value}" for name, value in rows)


def main(as_json: bool = False) -> dict:
    info = report()
    print(json.dumps(info, indent=2) if as_json else text(info))
    return info
