"""Process-group helpers: one code path for a single process and for ``torchrun``."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def init_from_env(device: str = "auto") -> torch.device:
    """Join the process group that ``torchrun`` describes (WORLD_SIZE > 1), pick the device.

    ``device``: auto (CUDA when available) | cpu | cuda. The backend is nccl on CUDA, gloo on CPU.
    Under torchrun each process takes GPU ``LOCAL_RANK``. Without torchrun (or when a group is
    already initialised, as in the tests) nothing is initialised here.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank if int(os.environ.get("WORLD_SIZE", 1)) > 1
                           else (dev.index or 0))
        torch.cuda.set_device(dev)
    if not is_dist() and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return dev


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    if is_dist():
        x = x.clone()
        dist.all_reduce(x)
        x /= world_size()
    return x


def all_gather_objects(obj) -> list:
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
