"""parallelize.clip_grad_norm against torch.nn.utils.clip_grad_norm_ and the closed form.

The sharded (FSDP, DTensor) case is checked by tests/distributed/test_training.py, whose
clipped steps match a single process's.
"""

from __future__ import annotations

import math

import pytest
import torch

from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import clip_grad_norm


def twin_models_with_grads() -> tuple[GPT, GPT]:
    """Two copies of a tiny GPT holding the same gradients (one parameter without any)."""
    torch.manual_seed(0)
    a = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16))
    b = GPT(a.config)
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 50, (2, 8))
    a(x, x).backward()
    a.transformer.h[1].ln_2.bias.grad = None  # clipping must skip parameters without a gradient
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.clone()
    return a, b


def grads(model: GPT) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def l2_norm(gs: list[torch.Tensor | None]) -> float:
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in gs if g is not None))


@pytest.mark.parametrize("fraction", [0.1, 0.9])
def test_clipping_equals_torch_when_the_norm_is_above_max(fraction: float) -> None:
    ours, ref = twin_models_with_grads()
    before = grads(ours)
    total = l2_norm(before)
    max_norm = fraction * total
    norm = clip_grad_norm(ours, max_norm)
    ref_norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), max_norm)
    assert torch.equal(norm, ref_norm)
    assert norm.item() == pytest.approx(total, rel=1e-6)  # the norm before clipping
    coef = max_norm / (total + 1e-6)  # torch's documented clip coefficient
    for g0, p, q in zip(before, ours.parameters(), ref.parameters(), strict=True):
        if g0 is None:
            assert p.grad is None and q.grad is None
            continue
        assert torch.equal(p.grad, q.grad)
        torch.testing.assert_close(p.grad, g0 * coef, rtol=1e-6, atol=0)
    assert l2_norm(grads(ours)) == pytest.approx(max_norm, rel=1e-5)


@pytest.mark.parametrize("max_norm", ["above", math.inf])
def test_gradients_below_max_norm_are_unchanged(max_norm: str | float) -> None:
    # math.inf is what train_step passes for optim.grad_clip = 0 (no clipping).
    ours, ref = twin_models_with_grads()
    before = grads(ours)
    limit = 2 * l2_norm(before) if max_norm == "above" else float(max_norm)
    norm = clip_grad_norm(ours, limit)
    assert torch.equal(norm, torch.nn.utils.clip_grad_norm_(ref.parameters(), limit))
    assert norm.item() == pytest.approx(l2_norm(before), rel=1e-6)
    for g0, p in zip(before, ours.parameters(), strict=True):
        assert (p.grad is None) if g0 is None else torch.equal(p.grad, g0)
