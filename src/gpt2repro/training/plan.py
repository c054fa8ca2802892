"""`train --dry-run`: what a config resolves to and what it will cost here, without training."""

from __future__ import annotations

import json
from dataclasses import asdict

import torch

from gpt2repro.config import TrainConfig
from gpt2repro.distributed import dist_info_from_env
from gpt2repro.metrics import datasheet_peak, flops_per_token, measure_matmul_peak
from gpt2repro.model import GPT
from gpt2repro.parallelize import DTYPES, resolve_dtype
from gpt2repro.run_dir import RunDir, resume_point
from gpt2repro.runtime import resolve_device
from gpt2repro.training.memory import (
    CPU_MALLOC_SLACK,
    RUNTIME_BYTES,
    device_memory_bytes,
    fmt_bytes,
    state_floor,
    step_probe,
    suggest_micro_batch,
)

ASSUMED_MFU = 0.4  # what a tuned run reaches on GPUs; on CPU the measured matmul rate is already the practical peak


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _memory_lines(cfg: TrainConfig, device: torch.device, dtype: str, world: int) -> list[str]:
    """Measured peak memory of the configured step, its floor, the device's memory, the largest micro-batch."""
    device_bytes, source = device_memory_bytes(device)
    if device.type == "cpu" and world > 1:
        device_bytes //= world  # the ranks of a CPU run share one machine's memory
        source += f", split over {world} ranks"
    runtime = fmt_bytes(RUNTIME_BYTES.get(device.type, 0))
    if device.type == "cpu":
        beyond = (
            f"RSS adds the torch runtime (~{runtime}) and freed blocks glibc keeps "
            f"(up to {CPU_MALLOC_SLACK}x the per-step tensors; the suggestion allows for both)"
        )
    else:
        beyond = f"plus the CUDA context (~{runtime}); eager mode (torch.compile saves less)"
    with step_probe(cfg, dtype, device, world) as probe:
        suggestion = suggest_micro_batch(cfg, probe, device.type, device_bytes, world)
        est = probe(cfg.batch.micro_batch)
    weights, grads, optimizer = state_floor(cfg, world)
    floor = f"{fmt_bytes(weights + grads + optimizer)} = weights {fmt_bytes(weights)} + "
    floor += f"gradients {fmt_bytes(grads)} + optimizer state {fmt_bytes(optimizer)}"
    if est is None:
        peak = f"more than this device holds: micro-batch {cfg.batch.micro_batch} ran out of memory"
    else:
        peak = f"~{fmt_bytes(est.peak)} of tensors per device, {est.method}"
    return [
        f"peak memory:         {peak}",
        f"  floor {floor} (closed form); the rest is activations and temporaries",
        f"  {beyond}",
        f"device memory:       {fmt_bytes(device_bytes)} ({source})",
        f"largest micro-batch: {suggestion.message}",
    ]


def _run_dir_lines(cfg: TrainConfig) -> list[str]:
    """Where the run starts from and what happens to what out_dir holds (the checks `train` does)."""
    r = cfg.run
    run_dir = RunDir(r.out_dir)
    point = resume_point(cfg.checkpoint.resume, run_dir, r.max_steps, r.max_minutes)
    if point is None:
        start = "step 0 (a new run)"
    else:
        start = f"step {point[1]} of {cfg.run.max_steps}, resuming {point[0]}"
    lines = [f"starts at:           {start}"]
    if run_dir.holds_run(run_dir.find_resume(cfg.checkpoint.resume)):
        lines.append(
            f"out_dir:             {cfg.run.out_dir} holds an earlier run; it will be moved "
            f"aside to {cfg.run.out_dir}.N (--checkpoint.resume auto continues it instead)"
        )
    return lines + [f"warning: {note}" for note in cfg.warnings()]


def dry_run_report(cfg: TrainConfig) -> str:
    """Resolved config, parameter count, batch arithmetic, time and memory estimates for this machine."""
    dist = dist_info_from_env()
    world = dist.world_size
    cfg.validate(world)
    run_lines = _run_dir_lines(cfg)  # reads the resume checkpoint: fails before the estimates
    device = resolve_device(cfg.run.device)
    if dist.enabled and device.type == "cuda":  # each rank measures on its own GPU
        device = torch.device("cuda", dist.local_rank)
    dtype = resolve_dtype(cfg.run.dtype, device)
    with torch.device("meta"):
        n_params = GPT(cfg.model).num_params()
    fpt = flops_per_token(cfg.model, cfg.batch.seq_len, n_params)
    peak = datasheet_peak(device, "tf32" if dtype == "fp32" else dtype)
    measured = peak is None
    if peak is None:
        peak = measure_matmul_peak(device, DTYPES[dtype], seconds=0.3)
    rate = peak * ASSUMED_MFU * world
    step_s = fpt * cfg.batch.tokens_per_step / rate
    lines = [
        json.dumps(asdict(cfg), indent=2, default=str),
        f"parameters:          {n_params:,}",
        f"tokens per step:     {cfg.batch.tokens_per_step:,}",
        f"world size:          {world}",
        f"accumulation steps:  {cfg.grad_accum_steps(world)} "
        f"(micro-batch {cfg.batch.micro_batch} x {cfg.batch.seq_len} tokens per rank)",
        f"total tokens:        {cfg.batch.tokens_per_step * cfg.run.max_steps:,}",
        f"FLOPs per token:     {fpt:.3e}",
        f"device / dtype:      {device} / {dtype} "
        f"({'measured' if measured else 'datasheet'} peak {peak / 1e12:.2f} TFLOP/s per device)",
        f"time per step:       ~{_duration(step_s)} (assuming {ASSUMED_MFU:.0%} MFU on {world} device(s))",
        f"total time:          ~{_duration(step_s * cfg.run.max_steps)}",
        *_memory_lines(cfg, device, dtype, world),
        *run_lines,
    ]
    return "\n".join(lines)
