"""Benchmarks behind `gpt2repro bench`: each returns a plain dict and never asserts a speed.

Results are ratios against a baseline measured in the same run, because this kind of
machine varies by 10-25% from run to run.
"""

from __future__ import annotations

import json
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from gpt2repro.loading import load_source
from gpt2repro.runtime import resolve_device, seed_everything
from gpt2repro.sampling import SamplingConfig, generate


def hardware() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings mean something."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_sample(
    model: str, new_tokens: int, prompt_tokens: int, device_name: str = "auto"
) -> dict[str, Any]:
    """Greedy generation of `new_tokens` tokens with and without the KV cache."""
    device = resolve_device(device_name)
    seed_everything(0)
    loaded = load_source(model, device)
    gpt = loaded.model.eval()
    block = gpt.config.block_size
    if prompt_tokens + new_tokens > block:
        raise ValueError(
            f"prompt_tokens + new_tokens = {prompt_tokens + new_tokens} exceeds the context {block}."
        )
    prompt = torch.randint(0, gpt.config.vocab_size, (1, prompt_tokens), device=device)
    cfg = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)
    generate(gpt, prompt, SamplingConfig(max_new_tokens=8, temperature=0.0))  # warm-up
    results: dict[str, Any] = {}
    outputs = {}
    for key, use_cache in (("cache", True), ("recompute", False)):
        sync(device)
        t0 = time.perf_counter()
        outputs[key] = generate(gpt, prompt, cfg, use_cache=use_cache)
        sync(device)
        seconds = time.perf_counter() - t0
        results[f"{key}_tokens_per_s"] = new_tokens / seconds
        results[f"{key}_seconds"] = seconds
    return {
        "bench": "sample",
        "date": date.today().isoformat(),
        "model": model,
        "params": gpt.num_params(),
        "new_tokens": new_tokens,
        "prompt_tokens": prompt_tokens,
        **results,
        "speedup": results["cache_tokens_per_s"] / results["recompute_tokens_per_s"],
        "same_tokens": bool(torch.equal(outputs["cache"], outputs["recompute"])),
        "hardware": hardware(),
    }


def report(result: dict[str, Any], out: Path | None) -> None:
    """Print `result` as a two-column table and optionally write it as JSON."""
    for key, value in result.items():
        if key != "hardware":
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"{key:<26} {shown}")
    print(f"{'hardware':<26} {json.dumps(result['hardware'])}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
