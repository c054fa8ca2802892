"""Everything applied to the model from outside: precision, torch.compile, DDP.

model.py stays plain torch.nn; this module decides how it runs on the hardware.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt2repro.distributed import DistInfo

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


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
        if name == "fp16" and device.type != "cuda":
            raise ValueError("run.dtype=fp16 needs a CUDA GPU; on CPU use fp32 or bf16.")
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def configure_backends(device: torch.device) -> None:
    """TF32 matmuls on CUDA: ~same accuracy for training, several times the fp32 throughput."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager[None]:
    """Mixed-precision context for forward passes; fp32 runs without autocast."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[dtype])


def wrap_model(model: nn.Module, device: torch.device, compile: bool, dist: DistInfo) -> nn.Module:
    """Compile, then wrap in DDP when there are several ranks."""
    if compile:
        model = torch.compile(model)  # type: ignore[assignment]
    if dist.enabled:
        ids = [dist.local_rank] if device.type == "cuda" else None
        model = DDP(model, device_ids=ids)
    return model


@contextlib.contextmanager
def grad_sync(model: nn.Module, sync: bool) -> Iterator[None]:
    """The one place that decides gradient synchronisation: only on an accumulation's last micro-step."""
    if isinstance(model, DDP) and not sync:
        with model.no_sync():
            yield
    else:
        yield
