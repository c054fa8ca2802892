"""Peak memory of one training step, measured by running the step, not by modelling it.

`train --dry-run` reports the peak for the configured micro-batch and the largest micro-batch
that fits the device. Both come from `step_probe`, which builds one rank's model and
optimizer once and then runs training.step's `train_step` + `optimizer_step`, the code that
trains, once per micro-batch asked about (as torchtitan's scripts/estimate/estimation.py):
- on CUDA for real, eager, read with the allocator's max_memory_allocated; a micro-batch that
  runs out of memory does not fit;
- elsewhere on fake tensors (FakeTensorMode: shapes and dtypes, no data, no memory), every
  tensor storage counted from allocation to release by `PeakTracker`. The same count on
  real tensors gives the same bytes (tests/unit/test_memory.py), and a real CPU step's peak
  RSS is within 20% of it (tests/integration/test_memory_estimate.py).
FSDP runs its real sharding over a process group of torch's "fake" backend (collectives that
do nothing), as rank 0 of the job. DDP's reducer cannot run there; its one memory effect is
reproduced: the gradients live in buckets that exist from construction on.

The closed form kept is the floor: fp32 weights, gradients and optimizer state, what even
the optimizer step of micro-batch 1 holds; when it alone does not fit, nothing is run.
Counted are tensor bytes. Left to the caller (`needed_bytes`): the torch runtime and, on
CPU, the freed blocks glibc's malloc keeps. torch.compile saves fewer activations than the
eager step measured here: for compiled runs the estimate is an upper bound.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from gpt2repro.config import TrainConfig
from gpt2repro.distributed import DistInfo
from gpt2repro.model import GPT
from gpt2repro.parallelize import wrap_model, zero_grads
from gpt2repro.training.optimizer import build_optimizer, muon_params
from gpt2repro.training.step import optimizer_step, train_step

DEVICE_FRACTION = 0.9
"""Share of a device's memory a run may plan for: headroom for fragmentation and other users."""
RUNTIME_BYTES = {"cpu": 350_000_000, "cuda": 500_000_000}
"""Memory a training process needs besides the step's tensors. CPU: the RSS of imported
torch (~0.23 GB) plus the kernels and thread pools the first step loads (~0.1 GB),
measured on Linux; CUDA: the context, ~0.5 GB."""
CPU_MALLOC_SLACK = 2.0
"""Peak RSS over the tensors a CPU step allocates and frees (all but parameters and AdamW
state): glibc's malloc keeps freed blocks below its self-raising mmap threshold. Measured
1.2-1.8x in tests/integration/test_memory_estimate.py's shapes with default settings,
~1.0x with MALLOC_MMAP_THRESHOLD_=1048576."""


@dataclass(frozen=True)
class MemoryEstimate:
    """One rank's tensor bytes at the peak of a training step, and the closed-form floor."""

    micro_batch: int
    peak: int
    """Measured: the most bytes of tensors alive at once during the step."""
    weights: int
    grads: int
    optimizer: int
    method: str
    """How `peak` was measured, for the report."""

    @property
    def total(self) -> int:
        return self.peak

    @property
    def floor(self) -> int:
        """fp32 weights + gradients + optimizer state: all alive at the optimizer step."""
        return self.weights + self.grads + self.optimizer

    def floor_breakdown(self) -> str:
        parts = (("weights", self.weights), ("gradients", self.grads))
        parts += (("optimizer state", self.optimizer),)
        return " + ".join(f"{name} {fmt_bytes(n)}" for name, n in parts)


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def state_floor(cfg: TrainConfig, world_size: int = 1) -> tuple[int, int, int]:
    """Bytes of one rank's fp32 weights, gradients and optimizer state (AdamW: two moments;
    Muon: one for the blocks' matrices), FSDP-sharded where it shards."""
    with torch.device("meta"):
        model = GPT(cfg.model)
    n = sum(p.numel() for p in model.parameters())  # the tied head once
    moments = 2 * n
    if cfg.optim.optimizer == "muon":
        moments -= sum(p.numel() for p in muon_params(model)[0])
    shard = world_size if cfg.run.parallel == "fsdp" else 1
    return 4 * n // shard, 4 * n // shard, 4 * moments // shard


class PeakTracker(TorchDispatchMode):
    """Bytes of live tensor storages, and their peak, counted as ops create and free them.

    A lean torch.distributed._tools.mem_tracker.MemTracker, which counts the same way
    (tests/unit/test_memory.py compares them) but also attributes memory to modules, at a
    cost per op that grows with their number: 7x the time of a fake step for GPT-2 1.5B.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: WeakIdKeyDictionary = WeakIdKeyDictionary()  # storage -> [bytes]
        self._resize = torch.UntypedStorage.resize_

    def _count(self, storage: torch.UntypedStorage) -> None:
        if storage not in self._sizes:
            size = [storage.nbytes()]
            self._sizes[storage] = size
            weakref.finalize(storage, self._release, size)
            self.live += size[0]

    def _release(self, size: list[int]) -> None:
        self.live -= size[0]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        dtensor = sys.modules.get("torch.distributed.tensor")
        if dtensor is not None and any(issubclass(t, dtensor.DTensor) for t in types):
            return NotImplemented  # DTensor runs its local ops through this mode instead
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._count(t.untyped_storage())
        self.peak = max(self.peak, self.live)
        return out

    def __enter__(self) -> PeakTracker:
        # FSDP frees and refills its unsharded parameters by resizing their storage, which
        # no op reports (MemTracker patches resize_ alike).
        def resize_(storage: torch.UntypedStorage, nbytes: int) -> Any:
            out = self._resize(storage, nbytes)
            size = self._sizes.get(storage)
            if size is not None:
                self.live += storage.nbytes() - size[0]
                size[0] = storage.nbytes()
                self.peak = max(self.peak, self.live)
            return out

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign]
        super().__enter__()
        return self

    def __exit__(self, *args: object) -> None:
        torch.UntypedStorage.resize_ = self._resize  # type: ignore[method-assign]
        super().__exit__(*args)


@contextlib.contextmanager
def fake_process_group(world_size: int) -> Iterator[None]:
    """A process group of `world_size` ranks whose collectives do nothing: this process
    shards, gathers and reduces as rank 0 of a real job would."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers "fake"

    if dist.is_initialized():
        raise RuntimeError("the memory probe needs a process without a process group")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size)
    try:
        yield
    finally:
        dist.destroy_process_group()


Probe = Callable[[int], MemoryEstimate | None]
"""micro-batch -> the step's measured peak, or None: it ran out of device memory."""


@contextlib.contextmanager
def step_probe(
    cfg: TrainConfig, dtype: str, device: torch.device, world_size: int = 1
) -> Iterator[Probe]:
    """One rank's model and optimizer (state created by one step on zero gradients), built
    once; the probe runs one training step per micro-batch and reports its peak."""
    T, parallel = cfg.batch.seq_len, cfg.run.parallel
    fsdp, ddp = world_size > 1 and parallel == "fsdp", world_size > 1 and parallel == "ddp"
    real = device.type == "cuda"
    tracker = None if real else PeakTracker()
    fake = contextlib.nullcontext() if real else FakeTensorMode()
    counted = tracker or contextlib.nullcontext()
    floor = state_floor(cfg, world_size)
    clip = cfg.optim.grad_clip
    method = (
        f"measured: one eager training step on {device}, max_memory_allocated"
        if real
        else "measured: one eager training step on fake tensors, every storage counted"
    )
    with fake_process_group(world_size) if fsdp else contextlib.nullcontext():
        if real:
            gc.collect()
            torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device) if real else 0
        with fake, counted, torch.device(device):
            gpt = GPT(cfg.model)
        model: torch.nn.Module = gpt
        if fsdp:  # outside fake mode: the device mesh reads its ranks from real tensors
            with counted:
                model = wrap_model(
                    gpt, device, False, DistInfo(world_size=world_size), parallel, dtype
                )
        with fake, counted, torch.device(device):
            optimizer = build_optimizer(gpt, cfg.optim, device)
            scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
            for p in gpt.parameters():
                p.grad = torch.zeros_like(p)
            optimizer.step()
            zero_grads(model, optimizer)
        seen: dict[int, MemoryEstimate | None] = {}

        def run(micro_batch: int) -> None:
            accum = cfg.batch.tokens_per_step // (micro_batch * T * world_size)
            x = torch.randint(0, cfg.model.vocab_size, (micro_batch, T))
            micro, buckets = 1, None
            if fsdp:  # it keeps the unsharded gradients of unsynchronised micro-steps itself
                micro = min(accum, 2)  # later micro-steps hold what the second holds
            elif accum > 1 or ddp:
                # From the second micro-step on, and always under DDP (its gradients are views
                # of buckets made at construction), gradients exist during forward: one
                # micro-step on zero gradients holds what those hold.
                for p in gpt.parameters():
                    p.grad = torch.zeros_like(p)
                if ddp and accum > 1:  # the first step's no_sync micro-steps make their own
                    buckets = torch.empty(sum(p.numel() for p in gpt.parameters()))
            train_step(model, optimizer, scaler, lambda: (x, x), micro, device, dtype, clip)
            optimizer_step(model, optimizer, scaler)
            del buckets

        def probe(micro_batch: int) -> MemoryEstimate | None:
            if micro_batch not in seen:
                seen[micro_batch] = None
                if tracker is not None:
                    tracker.peak = tracker.live
                    with fake, tracker, torch.device(device):
                        run(micro_batch)
                    peak = tracker.peak
                else:
                    torch.cuda.reset_peak_memory_stats(device)
                    try:
                        with torch.device(device):
                            run(micro_batch)
                        oom = False
                    except torch.OutOfMemoryError:
                        oom = True  # freed below, once the traceback no longer holds the step
                    if oom:
                        zero_grads(model, optimizer)
                        gc.collect()
                        torch.cuda.empty_cache()
                        return None
                    peak = torch.cuda.max_memory_allocated(device) - base
                seen[micro_batch] = MemoryEstimate(micro_batch, peak, *floor, method)
            return seen[micro_batch]

        try:
            yield probe
        finally:
            del model, gpt, optimizer
            if real:
                gc.collect()
                torch.cuda.empty_cache()


def device_memory_bytes(device: torch.device) -> tuple[int, str]:
    """Memory one device offers, and where the figure comes from."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return total, f"{torch.cuda.get_device_name(device)}, total"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "CPU, MemAvailable"  # reported in KiB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "CPU, available pages"


def needed_bytes(estimate: MemoryEstimate, device_type: str) -> int:
    """What a run needs of its device: the tensors, malloc's slack on CPU, the runtime."""
    slack = CPU_MALLOC_SLACK if device_type == "cpu" else 1.0
    kept = estimate.weights + estimate.optimizer  # allocated once, never freed
    return kept + int((estimate.total - kept) * slack) + RUNTIME_BYTES.get(device_type, 0)


@dataclass(frozen=True)
class Suggestion:
    micro_batch: int | None
    """The largest valid micro-batch whose step fits, or None."""
    estimate: MemoryEstimate | None
    """The step of `micro_batch`, or of the smallest candidate when none fits (None: not run)."""
    budget: int
    """Bytes allowed: a fraction of the device's memory, for `needed_bytes`."""
    message: str


def valid_micro_batches(tokens_per_step: int, seq_len: int, world_size: int) -> list[int]:
    """Micro-batches that split the step's tokens evenly (TrainConfig.grad_accum_steps)."""
    per_sequence = seq_len * world_size
    if tokens_per_step % per_sequence != 0:
        return []
    sequences = tokens_per_step // per_sequence
    return [b for b in range(1, sequences + 1) if sequences % b == 0]


def suggest_micro_batch(
    cfg: TrainConfig,
    probe: Probe,
    device_type: str,
    device_bytes: int,
    world_size: int = 1,
    fraction: float = DEVICE_FRACTION,
) -> Suggestion:
    """The largest micro-batch that keeps the token budget valid and fits `fraction` of memory.

    With accumulation the peak grows with the micro-batch, so those candidates are bisected.
    The largest runs a single micro-step, without gradients during forward, which can save
    at most their bytes: it is run unless a smaller micro-batch's step, less those bytes,
    already does not fit.
    """
    b = cfg.batch
    candidates = valid_micro_batches(b.tokens_per_step, b.seq_len, world_size)
    if not candidates:
        raise ValueError(
            f"tokens_per_step={b.tokens_per_step} is not a multiple of seq_len*world_size = "
            f"{b.seq_len}*{world_size}: no micro-batch divides it. Change --batch.tokens-per-step."
        )
    budget = int(fraction * device_bytes)
    advice = (
        f"more than {fraction:.0%} of {fmt_bytes(device_bytes)}. Use a smaller model, a shorter "
        f"--batch.seq-len, or --run.parallel fsdp over more devices."
    )
    weights, grads, optimizer = state_floor(cfg, world_size)
    floor = MemoryEstimate(1, weights + grads + optimizer, weights, grads, optimizer, "closed form")
    if needed_bytes(floor, device_type) > budget:
        need = fmt_bytes(needed_bytes(floor, device_type))
        return Suggestion(
            None,
            None,
            budget,
            f"none: even micro-batch {candidates[0]} needs more than ~{need} (weights, "
            f"gradients and optimizer state alone), {advice}",
        )

    def fits(mb: int) -> bool:
        est = probe(mb)
        return est is not None and needed_bytes(est, device_type) <= budget

    *rest, last = candidates
    best = failed = None
    if b.micro_batch == last and fits(last):  # measured for the report anyway
        best, rest = last, []
    lo, hi = 0, len(rest) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(rest[mid]):
            best, lo = rest[mid], mid + 1
        else:
            failed, hi = rest[mid], mid - 1
    chance = best != last
    if chance and failed is not None:
        f = probe(failed)  # less the gradients it held in forward (FSDP: unsharded)
        grads_in_forward = grads * (world_size if cfg.run.parallel == "fsdp" else 1)
        chance = (
            f is None
            or needed_bytes(replace(f, peak=f.peak - grads_in_forward), device_type) <= budget
        )
    if chance and fits(last):
        best = last
    if best is None:
        est = probe(candidates[0])
        need = f"~{fmt_bytes(needed_bytes(est, device_type))}" if est else "more than the device"
        return Suggestion(
            None, est, budget, f"none: even micro-batch {candidates[0]} needs {need}, {advice}"
        )
    est = probe(best)
    assert est is not None, f"micro-batch {best} fitted but has no estimate"
    return Suggestion(
        best,
        est,
        budget,
        f"{best} (--batch.micro-batch {best}), needing ~{fmt_bytes(needed_bytes(est, device_type))} "
        f"of {fraction:.0%} x {fmt_bytes(device_bytes)}",
    )
