"""`gpt2repro bench peak`: this machine's matmul FLOP/s per dtype and memory-copy bandwidth,
the denominators of every MFU figure."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

import torch

from gpt2repro.bench.common import hardware
from gpt2repro.metrics import datasheet_peak, measure_matmul_peak
from gpt2repro.runtime import resolve_device, sync


def bench_peak(device_name: str = "auto", seconds: float = 2.0) -> dict[str, Any]:
    """Matmul FLOP/s per dtype and memory-copy bandwidth, measured now; MFU figures divide by these."""
    device = resolve_device(device_name)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if device.type == "cuda":
        dtypes["fp16"] = torch.float16
    result: dict[str, Any] = {
        "bench": "peak",
        "date": date.today().isoformat(),
        "device": str(device),
    }
    for name, dtype in dtypes.items():
        result[f"matmul_{name}_tflops"] = (
            measure_matmul_peak(device, dtype, seconds=seconds, trials=8) / 1e12
        )
        sheet = datasheet_peak(device, name)
        if sheet is not None:
            result[f"datasheet_{name}_tflops"] = sheet / 1e12
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        result["matmul_tf32_tflops"] = (
            measure_matmul_peak(device, torch.float32, seconds=seconds, trials=8) / 1e12
        )
        torch.backends.cuda.matmul.allow_tf32 = False
    src = torch.empty(64 * 2**20, dtype=torch.uint8, device=device)  # 64 MiB, beyond the caches
    dst = torch.empty_like(src)
    dst.copy_(src)
    sync(device)
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        dst.copy_(src)
        count += 1
    sync(device)
    # A copy reads and writes every byte.
    result["copy_gb_per_s"] = 2 * src.numel() * count / (time.perf_counter() - t0) / 1e9
    result["hardware"] = hardware()
    return result
