"""Peak memory of one training step, measured by running the step, not by modelling it.

`train --dry-run` reports the peak of the configured micro-batch and the largest micro-batch
that fits the device. `step_probe` builds one rank's model and optimizer once, then runs
training.step's `train_step` + `optimizer_step` once per micro-batch asked about, as
torchtitan's scripts/estimate/estimation.py does:
- on CUDA for real and eager, read with max_memory_allocated; out of memory does not fit;
- elsewhere on fake tensors (FakeTensorMode: shapes, no data, no memory), every storage
  counted from allocation to release by `PeakTracker` (on real tensors the same count gives
  the same bytes; a real CPU step's peak RSS is within 20%, tests/integration).
FSDP shards for real over a process group of torch's "fake" backend, as rank 0 of the job.
DDP's reducer cannot run there; its memory effect is reproduced: gradients that live in
buckets made at construction.

Kept in closed form is the floor: fp32 weights, gradients and optimizer state, which even
micro-batch 1's optimizer step holds; when it alone does not fit, nothing is run. Counted
are tensor bytes; `needed_bytes` adds the runtime and, on CPU, the blocks malloc keeps.
torch.compile saves fewer activations than the eager step: for it this is an upper bound.
Accuracy and cost: benchmarks/results/2026-12-07_notes-memory-probe_cpu-2core-intel-amx.md.
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
    def floor(self) -> int:
        """fp32 weights + gradients + optimizer state: all alive at the optimizer step."""
        return self.weights + self.grads + self.optimizer


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

    A lean torch.distributed._tools.mem_tracker.MemTracker, which counts the same bytes
    (tests/unit/test_memory.py) but also attributes them to modules, at a cost per op that
    grows with their number: a fake step of GPT-2 124M takes 6x as long, of 1.5B 15x.
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

        torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign, assignment]
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


class _StepProbe:
    """`Probe` over one rank's model and optimizer, built once as training/setup.py builds
    them; the optimizer's state made by its own step on zero gradients."""

    def __init__(
        self, cfg: TrainConfig, dtype: str, device: torch.device, world_size: int, fake: bool
    ) -> None:
        self.cfg, self.dtype, self.device, self.world = cfg, dtype, device, world_size
        self.fsdp = world_size > 1 and cfg.run.parallel == "fsdp"
        allocator = device.type == "cuda" and not fake
        self.tracker = None if allocator else PeakTracker()
        self.fake = FakeTensorMode() if fake else contextlib.nullcontext()
        self.base = torch.cuda.memory_allocated(device) if allocator else 0
        counted = self.tracker or contextlib.nullcontext()
        with self.fake, counted, torch.device(device):
            self.gpt = GPT(cfg.model)
        self.model: torch.nn.Module = self.gpt
        if self.fsdp:  # outside fake mode: the device mesh reads its ranks from real tensors
            with counted:
                dist = DistInfo(world_size=world_size)
                self.model = wrap_model(self.gpt, device, False, dist, "fsdp", dtype)
        with self.fake, counted, torch.device(device):
            self.optimizer = build_optimizer(self.gpt, cfg.optim, device)
            for p in self.gpt.parameters():
                p.grad = torch.zeros_like(p)
            self.optimizer.step()
            zero_grads(self.model, self.optimizer)
        self.scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
        self.floor = state_floor(cfg, world_size)
        how = "max_memory_allocated" if allocator else "every storage counted"
        where = "fake tensors" if fake else str(device)
        self.method = f"measured: one eager training step on {where}, {how}"
        self.seen: dict[int, MemoryEstimate | None] = {}

    def __call__(self, micro_batch: int) -> MemoryEstimate | None:
        if micro_batch not in self.seen:
            peak = self._measure(micro_batch)
            est = (
                None
                if peak is None
                else MemoryEstimate(micro_batch, peak, *self.floor, self.method)
            )
            self.seen[micro_batch] = est
        return self.seen[micro_batch]

    def _step(self, micro_batch: int) -> None:
        """One optimizer step, holding what steps hold from their second micro-step on (every
        later micro-step holds the same)."""
        b = self.cfg.batch
        accum = b.tokens_per_step // (micro_batch * b.seq_len * self.world)
        x = torch.randint(0, self.cfg.model.vocab_size, (micro_batch, b.seq_len))
        micro, no_sync_grads = 1, None
        if self.fsdp:
            micro = min(accum, 2)  # FSDP keeps unsynchronised micro-steps' gradients itself
        elif accum > 1 or self.world > 1:
            # From the second micro-step on, and always under DDP (its gradients are views
            # of buckets made at construction), gradients exist during forward: one
            # micro-step on zero gradients holds what those hold.
            for p in self.gpt.parameters():
                p.grad = torch.zeros_like(p)
            if self.world > 1 and accum > 1:  # DDP's first step: no_sync makes its own
                no_sync_grads = torch.empty(sum(p.numel() for p in self.gpt.parameters()))
        args = (self.model, self.optimizer, self.scaler, lambda: (x, x), micro, self.device)
        train_step(*args, self.dtype, self.cfg.optim.grad_clip)
        optimizer_step(self.model, self.optimizer, self.scaler)
        del no_sync_grads

    def _measure(self, micro_batch: int) -> int | None:
        with torch.device(self.device):
            if self.tracker is not None:
                self.tracker.peak = self.tracker.live
                with self.fake, self.tracker:
                    self._step(micro_batch)
                return self.tracker.peak
            torch.cuda.reset_peak_memory_stats(self.device)
            try:
                self._step(micro_batch)
                return torch.cuda.max_memory_allocated(self.device) - self.base
            except torch.OutOfMemoryError:
                pass
        # Out of memory mid-step: the next step starts from a clean state.
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.scaler.is_enabled())
        gc.collect()  # the failed step's tensors, now that its traceback is gone
        torch.cuda.empty_cache()
        return None

    def close(self) -> None:
        del self.gpt, self.model, self.optimizer
        if self.tracker is None:
            gc.collect()
            torch.cuda.empty_cache()


@contextlib.contextmanager
def step_probe(
    cfg: TrainConfig,
    dtype: str,
    device: torch.device,
    world_size: int = 1,
    fake: bool | None = None,
) -> Iterator[Probe]:
    """One rank's model and optimizer, built once; the probe runs one training step per
    micro-batch and returns its measured peak. `fake`: on fake tensors (default: except on
    CUDA); real tensors off CUDA are counted as fake ones are (tests compare the two)."""
    fsdp = world_size > 1 and cfg.run.parallel == "fsdp"
    with fake_process_group(world_size) if fsdp else contextlib.nullcontext():
        probe = _StepProbe(
            cfg, dtype, device, world_size, device.type != "cuda" if fake is None else fake
        )
        try:
            yield probe
        finally:
            probe.close()


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
    return kept + int((estimate.peak - kept) * slack) + RUNTIME_BYTES.get(device_type, 0)


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


def largest_fitting(
    candidates: list[int], fits: Callable[[int], bool], fits_without_grads: Callable[[int], bool]
) -> int | None:
    """The largest of the ascending `candidates` that `fits`, probing few of them.

    All but the last accumulate, and their peak grows with the micro-batch: they are
    bisected. The last runs one micro-step, without gradients during forward, which saves
    at most their bytes: it is tried unless a smaller one failed even without them.
    """
    *rest, last = candidates
    best = failed = None
    lo, hi = 0, len(rest) - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(rest[mid]):
            best, lo = rest[mid], mid + 1
        else:
            failed, hi = rest[mid], mid - 1
    if (failed is None or fits_without_grads(failed)) and fits(last):
        return last
    return best


def suggest_micro_batch(
    cfg: TrainConfig,
    probe: Probe,
    device_type: str,
    device_bytes: int,
    world_size: int = 1,
    fraction: float = DEVICE_FRACTION,
) -> Suggestion:
    """The largest micro-batch that keeps the token budget valid and fits `fraction` of memory."""
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
        message = f"none: even micro-batch {candidates[0]} needs more than ~{need} (weights, "
        return Suggestion(
            None, None, budget, message + f"gradients and optimizer state alone), {advice}"
        )
    grads_in_forward = grads * (world_size if cfg.run.parallel == "fsdp" else 1)  # unsharded

    def needed(mb: int, less: int = 0) -> int | None:
        est = probe(mb)
        return (
            None if est is None else needed_bytes(replace(est, peak=est.peak - less), device_type)
        )

    def fits(mb: int) -> bool:
        need = needed(mb)
        return need is not None and need <= budget

    def fits_without_grads(mb: int) -> bool:  # out of memory: unknown, worth a try
        need = needed(mb, grads_in_forward)
        return need is None or need <= budget

    if b.micro_batch == candidates[-1] and fits(b.micro_batch):  # measured for the report anyway
        best: int | None = b.micro_batch
    else:
        best = largest_fitting(candidates, fits, fits_without_grads)
    est = probe(best or candidates[0])
    if best is None:
        need = f"~{fmt_bytes(needed_bytes(est, device_type))}" if est else "more than the device"
        message = f"none: even micro-batch {candidates[0]} needs {need}, {advice}"
        return Suggestion(None, est, budget, message)
    assert est is not None, f"micro-batch {best} fitted but has no estimate"
    need = fmt_bytes(needed_bytes(est, device_type))
    message = f"{best} (--batch.micro-batch {best}), needing ~{need} of {fraction:.0%} x {fmt_bytes(device_bytes)}"
    return Suggestion(best, est, budget, message)
