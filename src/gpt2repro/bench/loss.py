"""`gpt2repro bench loss`: the chunked head + cross-entropy against the naive one.

Peak memory of one forward + backward of the head and loss, each path in a fresh process so
that neither inherits the other's allocations: on CUDA the allocator's peak, on CPU the
growth of the process's peak RSS over its RSS just before the forward. Equality of the loss
and both gradients is checked in a third process.
"""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from typing import Any

import torch
import torch.nn.functional as F

from gpt2repro.bench.common import hardware
from gpt2repro.loss import linear_cross_entropy
from gpt2repro.metrics import peak_memory_bytes
from gpt2repro.parallelize import autocast, resolve_dtype
from gpt2repro.runtime import resolve_device, sync

PATHS = ("naive", "chunked")


def _inputs(
    tokens: int, n_embd: int, vocab: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    rows = (vocab + 63) // 64 * 64  # the model's padded embedding
    x = torch.randn(tokens, n_embd, device=device, generator=g)
    w = torch.randn(rows, n_embd, device=device, generator=g) * 0.02
    w[vocab:] = 0
    t = torch.randint(0, vocab, (tokens,), device=device, generator=g)
    return x.requires_grad_(True), w.requires_grad_(True), t


def _loss(path: str, x: torch.Tensor, w: torch.Tensor, t: torch.Tensor, vocab: int) -> torch.Tensor:
    if path == "naive":  # what a plain GPT-2 does: all logits of the micro-batch, then fp32
        return F.cross_entropy((x @ w.t())[:, :vocab].float(), t)
    return linear_cross_entropy(x, w, t, vocab)


def _current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def _measure(
    path: str, tokens: int, n_embd: int, vocab: int, dtype: str, device_name: str, reps: int
) -> dict[str, Any]:
    """Peak extra memory and median seconds of forward + backward for one path (fresh process)."""
    device = resolve_device(device_name)
    x, w, t = _inputs(tokens, n_embd, vocab, device)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = _current_rss()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        with autocast(device, dtype):
            loss = _loss(path, x, w, t, vocab)
        loss.backward()
        x.grad = w.grad = None
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "path": path,
        "peak_extra_gb": (peak_memory_bytes(device) - before) / 1e9,
        "seconds_median": times[len(times) // 2],
    }


def _compare(
    tokens: int, n_embd: int, vocab: int, dtype: str, device_name: str
) -> dict[str, float]:
    """Largest differences between the paths' loss and gradients (relative to the naive's scale)."""
    device = resolve_device(device_name)
    x, w, t = _inputs(tokens, n_embd, vocab, device)
    out = {}
    for path in PATHS:
        with autocast(device, dtype):
            loss = _loss(path, x, w, t, vocab)
        loss.backward()
        assert x.grad is not None and w.grad is not None
        out[path] = (loss.detach().float(), x.grad.float(), w.grad.float())
        x.grad = w.grad = None
    diffs = {}
    for i, name in enumerate(("loss", "grad_x", "grad_w")):
        ref, got = out["naive"][i], out["chunked"][i]
        diffs[f"{name}_max_rel_diff"] = float((got - ref).abs().max() / ref.abs().max())
    return diffs


def bench_loss(
    tokens: int, n_embd: int, vocab: int, dtype: str, device_name: str = "auto", reps: int = 3
) -> dict[str, Any]:
    """Both paths at the same micro-batch: peak memory, time, and how far apart they are."""
    if min(tokens, n_embd, vocab, reps) < 1:
        raise ValueError(
            f"tokens={tokens}, n_embd={n_embd}, vocab={vocab} and reps={reps} must each be at "
            "least 1."
        )
    resolve_dtype(dtype, resolve_device(device_name))  # an unknown name fails here, not in a worker
    ctx = multiprocessing.get_context("spawn")
    rows = []
    for path in PATHS:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            args = (path, tokens, n_embd, vocab, dtype, device_name, reps)
            rows.append(pool.submit(_measure, *args).result())
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        diffs = pool.submit(_compare, tokens, n_embd, vocab, dtype, device_name).result()
    naive, chunked = rows
    return {
        "bench": "loss",
        "date": date.today().isoformat(),
        "device": str(resolve_device(device_name)),
        "tokens": tokens,
        "n_embd": n_embd,
        "vocab": vocab,
        "dtype": dtype,
        "rows": rows,
        "memory_ratio": chunked["peak_extra_gb"] / naive["peak_extra_gb"],
        "time_ratio": chunked["seconds_median"] / naive["seconds_median"],
        **diffs,
        "hardware": hardware(),
    }
