"""torch.distributed helpers for torchrun (env:// rendezvous). Single-process runs see world size 1.

Importing this module does not import torch: a process group can only exist once torch has been imported, so
the numpy-only paths (evaluating stored predictions) use these helpers without paying for torch.
"""

from __future__ import annotations

import os
import sys
from typing import Any


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _group():
    """torch.distributed when a process group is up, else None (never imports torch)."""
    if "torch" not in sys.modules:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def is_initialized() -> bool:
    return _group() is not None


def rank() -> int:
    dist = _group()
    return dist.get_rank() if dist else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    dist = _group()
    return dist.get_world_size() if dist else 1


def is_main() -> bool:
    return rank() == 0


def init(backend: str) -> None:
    """Join the process group described by torchrun's environment variables."""
    if not is_initialized():
        import torch.distributed as dist

        dist.init_process_group(backend=backend, init_method="env://")


def shutdown() -> None:
    """Leave the process group once every rank is done (a rank tearing gloo down while another still writes its
    results can abort the other: "terminate called without an active exception")."""
    if dist := _group():
        dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist := _group():
        dist.barrier()


def all_reduce_sum(values):
    """Sum a tensor or numpy array over ranks (a tensor in place); returns the sum. No-op for one process."""
    dist = _group()
    if dist is None:
        return values
    import torch

    tensor = torch.from_numpy(values) if not isinstance(values, torch.Tensor) else values
    if dist.get_backend() == "nccl" and not tensor.is_cuda:  # NCCL reduces CUDA tensors only
        reduced = tensor.cuda()
        dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
        tensor.copy_(reduced.cpu())
    else:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return values if tensor is values else tensor.numpy()


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-item list for a single process)."""
    dist = _group()
    if dist is None:
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj):
    """Rank 0's Python object, on every rank."""
    dist = _group()
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
