"""Process-group setup and rank helpers; the only place that reads torchrun's environment."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def dist_info_from_env() -> DistInfo:
    """Read RANK / LOCAL_RANK / WORLD_SIZE as set by torchrun (absent: one process)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
    )


def init_distributed(device: torch.device, timeout_minutes: float = 10.0) -> DistInfo:
    """Join the process group when launched by torchrun: NCCL on CUDA, gloo on CPU.

    The timeout makes a job whose peer died fail with an error instead of hanging forever.
    """
    info = dist_info_from_env()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return info


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average `value` over ranks (a no-op for one process)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)  # gloo has no AVG
        value /= info.world_size
    return value


def print0(info: DistInfo, *args: object) -> None:
    """Print on rank 0 only, so logs are not repeated per process."""
    if info.is_main:
        print(*args, flush=True)
