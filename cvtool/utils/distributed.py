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


def slurm_job_id(env=None) -> str | None:
    """This SLURM job's id as scontrol takes it (array jobs: <array job id>_<task id>); None outside SLURM."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def in_submitit_job() -> bool:
    return "SUBMITIT_EXECUTOR" in os.environ or "SUBMITIT_LOCAL_JOB_ID" in os.environ


def export_submitit_env() -> bool:
    """Inside a submitit job of several tasks: the env:// variables torch.distributed reads (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR, MASTER_PORT), from submitit's job environment. True when it is such a job."""
    if not in_submitit_job():
        return False
    import hashlib

    import submitit

    job = submitit.JobEnvironment()
    if job.num_tasks < 2:
        return False
    port = 20000 + int(hashlib.sha1(str(job.job_id).encode()).hexdigest(), 16) % 20000  # the same on every task
    os.environ.update(RANK=str(job.global_rank), LOCAL_RANK=str(job.local_rank), WORLD_SIZE=str(job.num_tasks),
                      MASTER_ADDR=job.hostnames[0], MASTER_PORT=str(port))
    return True


def _group():
    """torch.distributed when a process group is up, else None (never imports torch)."""
    if sys.modules.get("torch") is None:  # not imported, or blocked (sys.modules["torch"] = None)
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
    """Join the process group described by torchrun's environment variables.

    After torchrun restarted a failed group, the ranks meet in the elastic agent's store again, which still holds
    the previous attempt's keys (gloo would connect to the dead ranks' addresses: "Connection refused"); their
    keys are put under a prefix per restart (`TORCHELASTIC_RESTART_COUNT`)."""
    if is_initialized():
        return
    import torch.distributed as dist

    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        dist.init_process_group(backend=backend, init_method="env://")
        return
    agent = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          int(os.environ["WORLD_SIZE"]), is_master=False)
    dist.init_process_group(backend=backend, store=dist.PrefixStore(f"cvtool/attempt_{attempt}", agent),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


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
