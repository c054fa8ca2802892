"""Process-group setup and rank helpers; the only place that reads torchrun's environment.

Every rank-aware decision goes through these helpers: `DistInfo.is_main` for side effects
(logs, samples, checkpoints are written by rank 0 only), `agree` for the per-step
decisions every rank must take identically, and `round_robin` for work split across
ranks (evaluation) that must still keep the ranks' collective calls in step.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

# NCCL's own default. Long enough for the longest wait one rank imposes on the others
# during training (rank 0 writing a checkpoint, a first-step compile), short enough that
# a rank stuck in a collective with a dead peer fails the job instead of hanging it.
TIMEOUT_MINUTES = 10.0


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
    values = {}
    for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
        raw = os.environ.get(name, str(default))
        try:
            values[name] = int(raw)
        except ValueError:
            raise ValueError(
                f"Environment variable {name}={raw!r} is not a whole number. Launch with "
                f"torchrun, which sets it, or unset it for one process."
            ) from None
    info = DistInfo(values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"])
    if info.enabled:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ValueError(
                f"WORLD_SIZE={info.world_size} asks for distributed training, but "
                f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set. "
                f"Launch with torchrun (`torchrun --nproc-per-node N -m gpt2repro train ...`), "
                f"or set MASTER_ADDR and MASTER_PORT (rank 0's host and a free port) on every "
                f"process, as srun-style launchers must."
            )
    return info


def init_distributed(device: torch.device, timeout_minutes: float = TIMEOUT_MINUTES) -> DistInfo:
    """Join the process group when launched by torchrun: NCCL on CUDA, gloo on CPU.

    The timeout makes a job whose peer died fail with an error instead of hanging forever.
    """
    info = dist_info_from_env()
    if not info.enabled or dist.is_initialized():
        return info
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if device.type == "cuda":
        visible = torch.cuda.device_count()
        if info.local_rank >= visible:
            raise ValueError(
                f"LOCAL_RANK={info.local_rank} but this node sees {visible} GPU(s). "
                f"Start at most {visible} processes per node (torchrun --nproc_per_node={visible})."
            )
        torch.cuda.set_device(info.local_rank)
        # device_id binds the communicator to this GPU at once, so a bad setup fails here.
        dist.init_process_group(
            "nccl", timeout=timeout, device_id=torch.device("cuda", info.local_rank)
        )
    else:
        dist.init_process_group("gloo", timeout=timeout)
    return info


# Rank 0 may prepare a dataset (hours for FineWeb-Edu) while the others wait for it.
SETUP_TIMEOUT_HOURS = 48.0


def wait_for_main(info: DistInfo) -> None:
    """Every rank waits here until all have arrived, however long rank 0's setup takes.

    A barrier on the training group would be cut off by its timeout (NCCL's watchdog after
    10 minutes), so this one runs on a separate gloo group on the CPU, with a timeout of
    `SETUP_TIMEOUT_HOURS`. Creating the group is itself collective: call this from every
    rank at the same points.
    """
    if not info.enabled:
        return
    group = dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=SETUP_TIMEOUT_HOURS))
    dist.barrier(group=group)
    dist.destroy_process_group(group)


def shutdown(wait: bool = False) -> None:
    """Leave the process group; `wait` first for every rank to get here (a job's normal end).

    Tearing gloo down while a peer is still finishing can abort that peer (torch 2.11,
    "terminate called without an active exception"). Error paths must not wait: the
    other ranks may never arrive.
    """
    if dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum `value` over ranks (a copy; a no-op for one process)."""
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average `value` over ranks (a no-op for one process)."""
    if info.enabled:
        value = all_reduce_sum(value, info) / info.world_size  # older gloo has no ReduceOp.AVG
    return value


def agree(loss: torch.Tensor, flags: tuple[bool, ...], info: DistInfo) -> tuple[float, list[bool]]:
    """The loss averaged over ranks, and for each flag whether any rank raised it.

    One small all-reduce (and the step's one host sync), so that every rank skips a bad
    step, stops on a signal or a time limit at the same step: a rank that decided alone
    would leave the others waiting in a collective it never joins.
    """
    packed = torch.tensor([0.0, *map(float, flags)], dtype=torch.float64, device=loss.device)
    packed[0] = loss.detach().double()
    values = all_reduce_sum(packed, info).tolist()
    return values[0] / info.world_size, [v > 0 for v in values[1:]]


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: T, info: DistInfo) -> T:
    """Rank 0's `obj` on every rank, so all ranks act on one decision (e.g. which checkpoint)."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def round_robin(items: Iterable[T], info: DistInfo) -> Iterator[T | None]:
    """This rank's share of `items` (item k goes to rank k % world_size), padded with None.

    Every rank iterates the same `items` and gets the same number of turns: a rank whose
    share ran out gets None, on which it should run one throwaway forward pass when the
    model is sharded (FSDP gathers each layer's weights from all ranks in every forward).
    Summing per-item results over ranks then gives exactly the one-process total.
    """
    rank, world = info.rank, info.world_size
    count = 0
    for count, item in enumerate(items, start=1):
        if (count - 1) % world == rank:
            yield item
    if count % world and rank >= count % world:
        yield None


def print0(info: DistInfo, *args: object) -> None:
    """Print on rank 0 only, so logs are not repeated per process."""
    if info.is_main:
        print(*args, flush=True)


def measure_allreduce(
    info: DistInfo, megabytes: float = 256.0, iters: int = 20
) -> dict[str, float]:
    """All-reduce bandwidth between the ranks: a check of the interconnect (docs/distributed.md).

    Runs on this rank's GPU (or the CPU without one). Returns the mean time per all-reduce
    of a `megabytes` fp32 buffer (the default is large enough for links to reach their peak), the algorithm bandwidth (bytes / time) and the bus
    bandwidth (algbw * 2(n-1)/n: the figure nccl-tests prints, to compare with the link's
    rated speed).
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", info.local_rank) if cuda else torch.device("cpu")
    n = max(1, int(megabytes * 2**20) // 4)
    buf = torch.zeros(n, dtype=torch.float32, device=device)  # zeros: repeated sums stay finite
    for _ in range(3):  # warm-up: the first calls set up communicators and buffers
        all_reduce_sum(buf, info)
    if cuda:
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        if info.enabled:
            dist.all_reduce(buf)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - t0) / iters
    algbw = buf.numel() * 4 / max(seconds, 1e-12)
    busbw = algbw * 2 * (info.world_size - 1) / info.world_size
    return {"seconds": seconds, "algbw_gb_s": algbw / 1e9, "busbw_gb_s": busbw / 1e9}
