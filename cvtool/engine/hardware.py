"""Resolve the `hardware/` config into concrete devices, precision and memory-format choices."""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from cvtool.errors import CvtoolError
from cvtool.utils import distributed as dist


@dataclass(frozen=True)
class Hardware:
    device: torch.device
    amp_dtype: torch.dtype | None  # None = full precision
    channels_last: bool
    pin_memory: bool
    compile: bool
    distributed: bool
    sync_bn: bool

    @property
    def use_grad_scaler(self) -> bool:
        return self.amp_dtype == torch.float16


def _device(name: str, distributed: bool) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CvtoolError("hardware asks for a CUDA GPU but none is available", where=f"device={name}",
                              fix="use hardware=cpu (or hardware=auto to pick the GPU only when present)")
        if distributed or name == "cuda":
            name = f"cuda:{dist.local_rank() if distributed else torch.cuda.current_device()}"
    return torch.device(name)


def native_cpu_bf16() -> bool:
    """True on CPUs with bfloat16 arithmetic in hardware (AVX512-BF16 or AMX): bf16 autocast runs convolutions
    ~2x faster there (measured on this project's 2-core EPYC); elsewhere it would be emulated and slower."""
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except AttributeError:  # private helpers of torch.cpu: absent -> assume no native bf16
        return False


def cpu_model() -> str:
    """The CPU's model name as the OS reports it (Linux /proc/cpuinfo; else the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_summary() -> str:
    """The machine a measured figure belongs to: CPU model, its bf16/AMX support, threads, GPU and torch."""
    try:
        flags = f"AVX512-BF16 {'yes' if torch.cpu._is_avx512_bf16_supported() else 'no'}, " \
                f"AMX {'yes' if torch.cpu._is_amx_tile_supported() else 'no'}"
    except AttributeError:
        flags = "bf16 support unknown"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return f"{cpu_model()} ({flags}), {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}"


def _auto(value, default: bool) -> bool:
    return default if value == "auto" else bool(value)


def resolve_hardware(cfg: dict, amp_on_cpu: bool = True) -> Hardware:
    """`cfg` is the plain `hardware` config section; `amp_on_cpu=False` (a model's `amp_on_cpu`) makes amp=auto
    full precision on CPUs."""
    distributed = bool(cfg["distributed"])
    if distributed and not dist.launched_by_torchrun():
        raise CvtoolError("hardware=ddp needs to be launched by torchrun", where="hardware=ddp",
                          fix="run: torchrun --nproc_per_node=N -m cvtool train hardware=ddp ...")
    device = _device(str(cfg["device"]), distributed)
    cuda = device.type == "cuda"
    amp = str(cfg["amp"])
    if amp == "auto":
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else (
            "bf16" if native_cpu_bf16() and amp_on_cpu else "off")
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None, "False": None}
    if amp not in dtypes:
        raise CvtoolError(f"unknown hardware.amp '{amp}'", where="hardware.amp", fix="use auto, bf16, fp16 or off")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = bool(cfg["cudnn_benchmark"])
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    return Hardware(device=device, amp_dtype=dtypes[amp], channels_last=_auto(cfg["channels_last"], cuda),
                    pin_memory=_auto(cfg["pin_memory"], cuda), compile=bool(cfg["compile"]),
                    distributed=distributed, sync_bn=bool(cfg["sync_bn"]))


def init_distributed(hw_cfg: dict) -> None:
    """Join the torchrun process group when hardware.distributed is set (NCCL on GPUs, gloo on CPU)."""
    if not hw_cfg["distributed"] or not dist.launched_by_torchrun():
        return
    backend = hw_cfg["backend"]
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and hw_cfg["device"] != "cpu" else "gloo"
    dist.init(backend)
