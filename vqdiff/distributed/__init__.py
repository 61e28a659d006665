"""Thin helpers over ``torch.distributed`` that read torchrun's environment.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; without it
everything here answers as a single process (rank 0 of 1) and collective calls are no-ops.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "is_dist_initialized",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_primary",
    "barrier",
    "all_reduce",
    "all_reduce_mean",
    "all_gather_object",
    "launched_by_torchrun",
    "default_backend",
    "init_distributed",
    "cleanup_distributed",
]


def is_dist_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """True when the environment carries torchrun's rank variables."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def get_rank() -> int:
    if is_dist_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def get_world_size() -> int:
    if is_dist_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_primary() -> bool:
    """The process that writes checkpoints, logs and progress bars."""
    return get_rank() == 0


def default_backend(device: torch.device | str | None = None) -> str:
    """NCCL for CUDA devices, gloo for CPU."""
    if device is None:
        use_cuda = torch.cuda.is_available()
    else:
        use_cuda = torch.device(device).type == "cuda"
    return "nccl" if use_cuda and dist.is_nccl_available() else "gloo"


def init_distributed(
    backend: str | None = None,
    device: torch.device | str | None = None,
    init_method: str | None = None,
    timeout_minutes: float = 30.0,
) -> bool:
    """Join the process group torchrun described; returns whether this run is distributed.

    Does nothing (and returns False) for a single process. On CUDA the local GPU is selected before
    the group is made, so NCCL binds the right device.
    """
    if is_dist_initialized():
        return True
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) <= 1:
        return False
    backend = backend or default_backend(device)
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(
        backend=backend,
        init_method=init_method or "env://",
        timeout=datetime.timedelta(minutes=timeout_minutes),
    )
    return True


def cleanup_distributed() -> None:
    """Leave the process group once every rank got here.

    Without the barrier a rank that finishes first (e.g. while rank 0 still writes the last checkpoint)
    tears down gloo under the others' feet, and a process can abort at exit.
    """
    if is_dist_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def barrier() -> None:
    if is_dist_initialized():
        dist.barrier()


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (``sum``, ``mean``, ``max`` or ``min``); identity for one process."""
    if not is_dist_initialized():
        return tensor
    ops = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    if op not in ops:
        raise ValueError(f"all_reduce op must be one of {sorted(ops)}, got {op!r}")
    dist.all_reduce(tensor, op=ops[op])
    if op == "mean":
        tensor /= get_world_size()
    return tensor


def all_reduce_mean(value: float, device: torch.device | str = "cpu") -> float:
    """Mean of a Python number over all ranks."""
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    return float(all_reduce(t, "mean").item())


def all_gather_object(obj: Any) -> list:
    if not is_dist_initialized():
        return [obj]
    out: list = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
