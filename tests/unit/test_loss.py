"""Chunked linear cross-entropy against the naive head + F.cross_entropy it replaces."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpt2repro.loss import chunk_tokens_for, linear_cross_entropy
from gpt2repro.model import GPT, GPTConfig


def naive(x: torch.Tensor, w: torch.Tensor, t: torch.Tensor, vocab: int) -> torch.Tensor:
    """What model.py did before: all logits of the batch, sliced, in fp32, then the loss."""
    return F.cross_entropy((x @ w.t())[:, :vocab].float(), t, ignore_index=-1)


def inputs(n: int = 37, c: int = 16, rows: int = 64, vocab: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g)
    w = torch.randn(rows, c, generator=g) * 0.5
    w[vocab:] = 0.3  # nonzero padded rows: must still get no probability and no gradient
    t = torch.randint(0, vocab, (n,), generator=g)
    t[::5] = -1  # ignored positions
    return x, w, t


def loss_and_grads(fn, x, w, t, vocab, **kw):
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    loss = fn(x, w, t, vocab, **kw)
    loss.backward()
    return loss.detach(), x.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 5, 37, 1000])
def test_fp32_equals_naive_for_any_chunking(chunk: int) -> None:
    x, w, t = inputs()
    ref = loss_and_grads(naive, x, w, t, 50)
    got = loss_and_grads(linear_cross_entropy, x, w, t, 50, chunk_tokens=chunk)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert got[2][50:].abs().max() == 0  # padded rows: zero gradient


def test_bf16_autocast_matches_naive_within_bf16_tolerance() -> None:
    x, w, t = inputs(n=64, c=32, rows=128, vocab=100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = loss_and_grads(naive, x, w, t, 100)
        got = loss_and_grads(linear_cross_entropy, x, w, t, 100, chunk_tokens=16)
    exact = loss_and_grads(naive, x, w, t, 100)
    assert got[0].dtype == torch.float32
    assert abs(got[0] - ref[0]) < 1e-2 * ref[0]
    for g, r, e in zip(got[1:], ref[1:], exact[1:], strict=True):
        scale = e.abs().max()
        # The chunked path is no further from fp32 than the naive bf16 path is.
        assert (g - e).abs().max() <= max(2 * (r - e).abs().max(), 1e-2 * scale)
        assert (g - r).abs().max() < 2e-2 * scale


def test_without_grad_gives_the_same_loss() -> None:
    x, w, t = inputs()
    with torch.no_grad():
        plain = linear_cross_entropy(x, w, t, 50, chunk_tokens=4)
    assert torch.allclose(plain, naive(x, w, t, 50))


def test_all_targets_ignored_gives_zero_loss_and_gradients() -> None:
    x, w, t = inputs()
    loss, gx, gw = loss_and_grads(linear_cross_entropy, x, w, torch.full_like(t, -1), 50)
    assert loss == 0 and gx.abs().max() == 0 and gw.abs().max() == 0


BUDGETS = {"cpu": 8 * 2**20, "cuda": 256 * 2**20, "mps": 256 * 2**20}  # bytes, as loss.py documents


@pytest.mark.parametrize("device", sorted(BUDGETS))
@pytest.mark.parametrize("vocab_rows", [64, 4096, 8192, 50304, 131072, 262144])
def test_chunk_size_keeps_fp32_logits_within_budget(device: str, vocab_rows: int) -> None:
    """The largest chunk whose fp32 logits (4 * chunk * V bytes) fit the device's budget,
    but never fewer than 512 tokens (then, and only then, the budget is exceeded)."""
    budget = BUDGETS[device]
    chunk = chunk_tokens_for(vocab_rows, device)
    if 4 * 512 * vocab_rows <= budget:
        assert 4 * chunk * vocab_rows <= budget < 4 * (chunk + 1) * vocab_rows
    else:
        assert chunk == 512


def test_chunk_size_examples() -> None:
    assert chunk_tokens_for(50304, "cuda") == 1334  # GPT-2's padded vocabulary, as documented
    assert chunk_tokens_for(4096, "cpu") == 512  # exactly 8 MiB
    assert chunk_tokens_for(1024, "cpu") == 2048
    assert chunk_tokens_for(50304, "cpu") == 512  # floor: the weight gradient's traffic


def test_model_loss_equals_naive_loss_from_logits() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    idx = torch.randint(0, 50, (3, 16))
    tgt = torch.randint(0, 50, (3, 16))
    tgt[0, :4] = -1
    loss = model(idx, tgt)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref = F.cross_entropy(model(idx).reshape(48, -1).float(), tgt.reshape(48), ignore_index=-1)
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)


def test_compiled_model_loss_and_grads_match_eager() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    idx = torch.randint(0, 50, (2, 16))
    tgt = torch.randint(0, 50, (2, 16))
    eager = model(idx, tgt)
    eager.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    compiled = torch.compile(model)(idx, tgt)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], rtol=1e-4, atol=1e-6, msg=n)
