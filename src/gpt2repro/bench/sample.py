"""`gpt2repro bench sample`: tokens/s of generation with and without the KV cache."""

from __future__ import annotations

import time
from datetime import date
from typing import Any

import torch

from gpt2repro.bench.common import hardware
from gpt2repro.loading import load_source
from gpt2repro.runtime import resolve_device, seed_everything, sync
from gpt2repro.sampling import SamplingConfig, generate


def bench_sample(
    model: str, new_tokens: int, prompt_tokens: int, device_name: str = "auto"
) -> dict[str, Any]:
    """Greedy generation of `new_tokens` tokens with and without the KV cache."""
    if prompt_tokens < 1 or new_tokens < 1:
        raise ValueError(
            f"prompt_tokens={prompt_tokens} and new_tokens={new_tokens} must each be at least 1."
        )
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
