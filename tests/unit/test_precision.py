"""bf16 autocast training tracks fp32, so the CPU fast path never costs correctness."""

from __future__ import annotations

import pytest
import torch

from gpt2repro import parallelize
from gpt2repro.config import OptimConfig
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import autocast, cpu_has_bf16, resolve_dtype
from gpt2repro.training.optimizer import build_optimizer

TOLERANCE = 0.03  # nats; bf16 has an 8-bit mantissa, so per-step losses differ in the 2nd-3rd digit


def loss_curve(dtype: str, steps: int = 40) -> list[float]:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=128, block_size=32, n_layer=2, n_head=2, n_embd=64))
    opt = build_optimizer(model, OptimConfig(lr=3e-3, weight_decay=0.1), torch.device("cpu"))
    data = torch.Generator().manual_seed(1)
    # A learnable stream: each token is the previous one plus a small random step, mod 128.
    base = torch.randint(0, 128, (8, 1), generator=data)
    steps_ = torch.randint(0, 3, (8, 33), generator=data).cumsum(dim=1)
    seq = (base + steps_) % 128
    x, y = seq[:, :-1], seq[:, 1:]
    losses = []
    for _ in range(steps):
        with autocast(torch.device("cpu"), dtype):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return losses


def test_bf16_tracks_fp32() -> None:
    fp32, bf16 = loss_curve("fp32"), loss_curve("bf16")
    assert fp32[-1] < fp32[0] - 1.0  # it learns, so the comparison covers a moving curve
    worst = max(abs(a - b) for a, b in zip(fp32, bf16, strict=True))
    assert worst < TOLERANCE, worst
    assert fp32 != bf16  # bf16 really ran


def native_bf16_per_torch() -> bool:
    """PyTorch's own CPU feature probe (the cpuinfo library), independent of /proc/cpuinfo."""
    caps = torch._C._cpu._get_cpu_capability()  # type: ignore[attr-defined]
    return bool(caps["avx512_bf16"] or caps["amx_bf16"])


def test_auto_dtype_on_cpu_is_native_bf16_else_fp32() -> None:
    assert cpu_has_bf16() == native_bf16_per_torch()
    expected = "bf16" if native_bf16_per_torch() else "fp32"
    assert resolve_dtype("auto", torch.device("cpu")) == expected
    assert resolve_dtype("fp32", torch.device("cpu")) == "fp32"
    assert resolve_dtype("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.parametrize("native", [True, False])
def test_auto_dtype_follows_the_cpu_probe(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(parallelize, "cpu_has_bf16", lambda: native)
    assert resolve_dtype("auto", torch.device("cpu")) == ("bf16" if native else "fp32")
