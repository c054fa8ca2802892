"""memory.step_probe's fake-tensor step against the memory a real CPU training step takes,
within 20%.

What is measured: in a fresh process (this file run as a script), the peak RSS of three
training steps (training.step's train_step and optimizer_step, as a run takes them) minus
the RSS just before the model is built. Two things would otherwise blur it, and are kept
out on purpose:
- the torch runtime loads kernels and starts thread pools lazily, ~100 MB of RSS on the
  first step: one step of a one-layer model runs before the baseline is taken;
- glibc's malloc keeps freed blocks below its self-raising mmap threshold, 1.2-1.8x the
  per-step tensors as RSS here (memory.CPU_MALLOC_SLACK): MALLOC_MMAP_THRESHOLD_ gives
  every block of 1 MiB or more its own mapping, returned on free, so RSS follows the
  live tensors, as CUDA's max_memory_allocated does.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

import pytest
import torch

from gpt2repro.config import BatchConfig, OptimConfig, TrainConfig
from gpt2repro.metrics import peak_memory_bytes
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import cpu_has_bf16
from gpt2repro.training.memory import step_probe
from gpt2repro.training.optimizer import build_optimizer
from gpt2repro.training.step import optimizer_step, train_step

TOLERANCE = 0.20
SHAPES = {
    # The shakespeare_cpu preset: activations are most of the peak.
    "shakespeare_cpu": (GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=4096), 32),
    # GPT-2's vocabulary: the loss head's chunks (512 tokens x 50,304 fp32 logits) dominate.
    "gpt2_vocab": (GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=50257), 16),
}  # fmt: skip
SEQ_LEN = 128
DTYPES = ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"]


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def _train(cfg: GPTConfig, micro_batch: int, dtype: str, steps: int) -> None:
    device = torch.device("cpu")
    torch.manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (micro_batch, SEQ_LEN))
    y = torch.randint(0, cfg.vocab_size, (micro_batch, SEQ_LEN))
    model = GPT(cfg)
    opt = build_optimizer(model, OptimConfig(), device)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(steps):
        train_step(model, opt, scaler, lambda: (x, y), 1, device, dtype, 1.0)
        optimizer_step(model, opt, scaler)


def measure(shape: str, dtype: str) -> int:
    """Peak RSS of three steps minus the RSS before the model is built, runtime warmed up."""
    cfg, micro_batch = SHAPES[shape]
    warm = GPTConfig(n_layer=1, n_head=4, n_embd=64, block_size=SEQ_LEN, vocab_size=64)
    _train(warm, 1, dtype, 1)
    gc.collect()
    base = _rss()
    _train(cfg, micro_batch, dtype, 3)
    return peak_memory_bytes(torch.device("cpu")) - base  # VmHWM: see metrics.peak_memory_bytes


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_estimate_within_20_percent_of_measured_cpu_peak(shape: str, dtype: str) -> None:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    out = subprocess.run(
        [sys.executable, __file__, shape, dtype],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"]
    model, micro_batch = SHAPES[shape]
    cfg = TrainConfig(model=model, batch=BatchConfig(micro_batch * SEQ_LEN, micro_batch, SEQ_LEN))
    with step_probe(cfg, dtype, torch.device("cpu")) as probe:
        est = probe(micro_batch)
    assert est is not None
    estimate = est.peak
    ratio = estimate / measured
    print(
        f"{shape} {dtype}: estimate {estimate / 1e6:.0f} MB, measured {measured / 1e6:.0f} MB, ratio {ratio:.3f}"
    )
    assert abs(ratio - 1) <= TOLERANCE, (
        f"{shape} {dtype}: estimate {estimate / 1e6:.0f} MB vs measured {measured / 1e6:.0f} MB"
    )


if __name__ == "__main__":
    print(json.dumps({"peak_bytes": measure(sys.argv[1], sys.argv[2])}))
