"""Everything applied to the model from outside: precision, torch.compile, DDP, FSDP.

model.py stays plain torch.nn; this module decides how it runs on the hardware.

`run.parallel = "ddp"` keeps a full replica of the model and optimizer on every rank and
all-reduces gradients; `"fsdp"` (FSDP2, `torch.distributed.fsdp.fully_shard`) shards
parameters, gradients and optimizer state across ranks, each transformer block its own
unit, and gathers a block's weights just before it runs. Both give the same numbers as
one process with the whole batch (tests/distributed).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt2repro.distributed import DistInfo
from gpt2repro.model import GPT
from gpt2repro.runtime import keep_freed_host_memory

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PARALLEL = ("ddp", "fsdp")


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be conservative
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str, device: torch.device) -> str:
    """`auto`: bf16 on CUDA that supports it, fp16 on older GPUs; on CPU bf16 where native, else fp32."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"dtype {name!r}: use auto, {', '.join(DTYPES)}.")
        if name == "fp16" and device.type != "cuda":
            raise ValueError("run.dtype=fp16 needs a CUDA GPU; on CPU use fp32 or bf16.")
        return name
    if device.type == "cuda":
        # Emulated bf16 (V100, T4) runs far below fp16 there.
        return "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def check_parallel(parallel: str, dtype: str) -> None:
    """Raise ValueError for an unknown mode, or FSDP with fp16 (needs a sharded grad scaler)."""
    if parallel not in PARALLEL:
        raise ValueError(f"run.parallel={parallel!r}: use one of {', '.join(PARALLEL)}.")
    if parallel == "fsdp" and dtype == "fp16":
        raise ValueError(
            "run.parallel=fsdp with fp16 is not supported (its loss scaling would need every "
            "rank's overflow check). Use --run.dtype bf16 (GPUs since A100) or fp32, or run.parallel=ddp."
        )


def configure_backends(device: torch.device) -> None:
    """TF32 matmuls on CUDA: ~same accuracy for training, several times the fp32 throughput.
    On CPU, large tensors reuse freed host memory instead of faulting in fresh pages."""
    if device.type == "cpu":
        keep_freed_host_memory()
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[None]:
    """Mixed-precision context for forward passes; fp32 runs without autocast."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


CPU_MATH_ATTENTION_MAX_T = 256
"""On CPU in bf16, PyTorch's flash-attention kernel is slower than plain matmul + softmax for
short sequences and much faster for long ones
(benchmarks/results/2026-11-21_notes-cpu-attention-kernel_cpu-2core-intel-amx.md)."""


@contextlib.contextmanager
def train_forward_context(device: torch.device, dtype: str, seq_len: int) -> Iterator[None]:
    """autocast, plus the attention kernel that is fastest for this device, precision and length."""
    with autocast(device, dtype):
        if device.type == "cpu" and dtype == "bf16" and seq_len <= CPU_MATH_ATTENTION_MAX_T:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(SDPBackend.MATH):
                yield
        else:
            yield


def wrap_model(
    model: GPT,
    device: torch.device,
    compile: bool,
    dist: DistInfo,
    parallel: str = "ddp",
    dtype: str = "fp32",
) -> nn.Module:
    """Wrap in DDP (or shard with FSDP) when there are several ranks, then compile.

    DDP goes inside the compiled module: then dynamo splits the graph at DDP's gradient
    buckets, so each bucket's all-reduce overlaps the rest of the backward pass. DDP
    around a compiled model would start every all-reduce only after the whole backward.
    Build the optimizer afterwards: FSDP replaces the parameters with sharded ones.
    """
    check_parallel(parallel, dtype)
    if parallel == "fsdp" and dist.enabled:
        return shard_model(model, device, compile, dist, dtype)
    wrapped: nn.Module = model
    if dist.enabled:
        ids = [dist.local_rank] if device.type == "cuda" else None
        # The gradients live in DDP's all-reduce buckets instead of beside a copy of them:
        # one model's worth of fp32 less memory, and no copy in and out of the buckets.
        wrapped = DDP(wrapped, device_ids=ids, gradient_as_bucket_view=True)
    if compile:
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
    return wrapped


def shard_model(
    model: GPT, device: torch.device, compile: bool, dist: DistInfo, dtype: str
) -> nn.Module:
    """FSDP2 over all ranks: one unit per block, the root unit holding the (tied) embeddings.

    Mixed precision: weights are gathered and used in `dtype`, gradients are reduced and
    the optimizer runs in fp32. The model keeps its class (now also an FSDPModule), so
    `checkpoint.unwrap` still finds the GPT; blocks compile in place for the same reason.
    """
    # Imported here: torch.distributed.fsdp costs about a second, which sample/export need not pay.
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.world_size,))
    policy = MixedPrecisionPolicy(
        param_dtype=None if dtype == "fp32" else DTYPES[dtype], reduce_dtype=torch.float32
    )
    for block in model.transformer.h:
        if compile:
            block.compile()
        fully_shard(block, mesh=mesh, mp_policy=policy)
    if compile:
        # The root's forward (embeddings, blocks, ln_f) stays eager around the compiled
        # blocks; the head's chunked loss is the root's one costly part: compiled, its
        # softmax passes over each (chunk, V) fp32 block fuse instead of one pass per op.
        model.head_loss.compile()
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(model: nn.Module) -> bool:
    """Whether every forward of `model` is a collective call (FSDP): all ranks must make it."""
    fsdp = sys.modules.get("torch.distributed.fsdp")  # no FSDP module exists unless imported
    return fsdp is not None and isinstance(model, fsdp.FSDPModule)


def is_dtensor(t: object) -> bool:
    """Whether `t` is a sharded (FSDP) tensor."""
    api = sys.modules.get("torch.distributed.tensor")  # no DTensor exists unless imported
    return api is not None and isinstance(t, api.DTensor)


def context_length(model: torch.nn.Module) -> int:
    """The block size of the model inside torch.compile / DDP wrappers."""
    inner: Any = model
    while not hasattr(inner, "config"):
        inner = getattr(inner, "_orig_mod", None) or getattr(inner, "module", None)
        if inner is None:
            raise ValueError(f"Cannot find the context length of {type(model).__name__}.")
    return int(inner.config.block_size)


@contextlib.contextmanager
def grad_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """The one place that decides gradient synchronisation: only on an accumulation's last micro-step.

    Entered before the forward pass. Under FSDP the skipped micro-steps accumulate
    unsharded fp32 gradients (one model's worth of memory) in exchange for one
    reduce-scatter per step instead of one per micro-step.
    """
    inner = getattr(model, "_orig_mod", model)  # DDP inside torch.compile (wrap_model)
    if sync:
        yield
    elif isinstance(inner, DDP):
        with inner.no_sync():
            yield
    elif is_sharded(model):
        sharded: Any = model
        sharded.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            sharded.set_requires_gradient_sync(True)
    else:
        yield


def zero_grads(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Clear the gradients after an optimizer step: to None, which frees them until the next
    backward, except under DDP. There they are views of DDP's buckets and are zeroed in
    place: set to None, the next accumulation's no_sync micro-steps would allocate
    gradients beside the buckets, a second copy of the model until the step's last one."""
    optimizer.zero_grad(set_to_none=not isinstance(getattr(model, "_orig_mod", model), DDP))


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """torch.nn.utils.clip_grad_norm_, also for sharded gradients; returns the global norm.

    Under FSDP each rank holds a shard of every gradient: the norm comes back as a
    replicated DTensor, turned into a plain tensor so `.item()` means the same everywhere.
    """
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    norm = full_tensor(torch.nn.utils.get_total_norm(grads))
    torch.nn.utils.clip_grads_with_norm_(model.parameters(), max_norm, norm)
    return norm


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a shard (a collective: every rank calls it, in the same order)."""
    if not is_dtensor(t):
        return t
    whole: torch.Tensor = t.full_tensor()  # type: ignore[attr-defined]
    return whole
