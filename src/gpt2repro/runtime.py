"""Device choice and seeding, shared by every command."""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import sys

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; anything else must be a valid torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"Unknown device {name!r}: use auto, cpu, cuda or cuda:N.") from e
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Device {name!r} is not supported: use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"Device {name!r} requested but CUDA is not available here; use --device cpu."
        )
    if device.type == "cuda" and device.index is not None:
        if device.index >= torch.cuda.device_count():
            raise ValueError(
                f"Device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)."
            )
        # Make it the current GPU, so calls without a device (synchronize, the RNG,
        # get_device_name, kernels of libraries) act on it rather than on GPU 0.
        torch.cuda.set_device(device)
    return device


def sync(device: torch.device) -> None:
    """Wait for `device`'s queued work, so that wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
_KEEP_BYTES = 2**31 - 1  # largest value mallopt takes: freed heap memory up to 2 GiB stays mapped


def keep_freed_host_memory() -> bool:
    """Serve large CPU tensors from glibc's heap and keep freed memory for reuse.

    glibc maps every allocation over 32 MiB afresh with mmap and unmaps it when freed, so
    each new large tensor (logits, casts, activations) pays a page fault per 4 KiB when first
    written. PyTorch's own CPU tuning guide makes the same point with jemalloc/tcmalloc; this
    gets it in-process. The cost: the process keeps its peak memory mapped (as a caching
    allocator does) and the heap can fragment, so `bench loss` measures without it
    (benchmarks/results/2026-11-22_notes-host-memory-reuse_cpu-2core-intel-amx.md).
    No-op, returning False, where libc is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
