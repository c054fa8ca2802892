"""The modern model options: soft-capped chunked loss against its plain formula, the KV
cache with RoPE and QK-norm against recomputation, and the classic model left as it was."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from gpt2repro import presets
from gpt2repro.loss import linear_cross_entropy
from gpt2repro.model import GPT, GPTConfig, KVCache, apply_rope, relu_squared, rope_angles
from gpt2repro.presets import modern_model_options


def capped_naive(x, w, t, vocab, cap):
    z = (x @ w.t())[:, :vocab].float()
    return F.cross_entropy(cap * torch.tanh(z / cap), t, ignore_index=-1)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_softcapped_chunked_loss_equals_capped_cross_entropy(chunk: int) -> None:
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(29, 16, generator=g), torch.randn(64, 16, generator=g) * 3
    w[50:] = 0.3  # padded rows: no probability, no gradient
    t = torch.randint(0, 50, (29,), generator=g)
    t[::4] = -1
    results = []
    for fn, kw in ((capped_naive, {"cap": 2.0}), (linear_cross_entropy, {"softcap": 2.0})):
        xx, ww = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        if fn is linear_cross_entropy:
            kw = kw | {"chunk_tokens": chunk}
        loss = fn(xx, ww, t, 50, **kw)
        loss.backward()
        results.append((loss.detach(), xx.grad, ww.grad))
    (l0, gx0, gw0), (l1, gx1, gw1) = results
    torch.testing.assert_close(l1, l0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gx1, gx0, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gw1, gw0, atol=1e-6, rtol=1e-5)
    assert gw1[50:].abs().max() == 0
    # The cap changes the loss here (logits reach ~10), so a silently ignored cap fails.
    assert abs(l0.item() - linear_cross_entropy(x, w, t, 50).item()) > 1e-2


def modern_tiny(**kw) -> GPTConfig:
    return replace(
        modern_model_options(presets.tiny_model(), logit_softcap=5.0), vocab_size=100, **kw
    )


def test_model_loss_equals_cross_entropy_of_its_capped_logits() -> None:
    torch.manual_seed(0)
    model = GPT(replace(modern_tiny(), zero_init_proj=False)).eval()
    idx = torch.randint(0, 100, (2, 12))
    logits = model(idx)
    assert logits.abs().max() <= 5.0
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 100), idx[:, 1:].reshape(-1))
    got = model(idx[:, :-1], idx[:, 1:])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_rope_rotates_pairs_by_position_times_frequency() -> None:
    cfg = modern_tiny()
    hs = cfg.n_embd // cfg.n_head
    x = torch.randn(1, 1, 3, hs)
    cos, sin = rope_angles(cfg, 5, 3, torch.device("cpu"))
    got = apply_rope(x, cos, sin)
    for t in range(3):
        for i in range(hs // 2):
            theta = (5 + t) * cfg.rope_base ** (-2 * i / hs)
            a, b = x[0, 0, t, i], x[0, 0, t, i + hs // 2]
            want = (
                a * torch.cos(torch.tensor(theta)) + b * torch.sin(torch.tensor(theta)),
                b * torch.cos(torch.tensor(theta)) - a * torch.sin(torch.tensor(theta)),
            )
            torch.testing.assert_close(got[0, 0, t, i], want[0], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(got[0, 0, t, i + hs // 2], want[1], atol=1e-5, rtol=1e-5)


def test_kv_cache_with_rope_and_qk_norm_equals_recomputation() -> None:
    torch.manual_seed(0)
    model = GPT(replace(modern_tiny(), zero_init_proj=False)).eval()
    idx = torch.randint(0, 100, (2, 20))
    with torch.no_grad():
        full = model(idx)  # (B, T, vocab)
        cache = KVCache(model.config, 2, 20, torch.device("cpu"), torch.float32)
        parts = [model(idx[:, :7], cache=cache)]
        parts += [model(idx[:, t : t + 1], cache=cache) for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_modern_model_has_no_position_table_and_an_untied_zero_head() -> None:
    model = GPT(modern_tiny())
    names = set(model.state_dict())
    assert "transformer.wpe.weight" not in names
    assert not any("ln_" in n for n in names)  # weight-free norms
    assert model.lm_head.weight.data_ptr() != model.transformer.wte.weight.data_ptr()
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight") or name == "lm_head.weight":
            assert p.abs().max() == 0, name
    C, V = 64, model.config.padded_vocab_size
    per_block = 4 * C * C + 8 * C * C  # c_attn + c_proj, c_fc + c_proj; no biases
    assert model.num_params() == 2 * 100 * C + 2 * per_block, (model.num_params(), V)


def test_classic_default_is_unchanged_gpt2() -> None:
    cfg = GPTConfig()
    assert (cfg.position, cfg.norm, cfg.qk_norm, cfg.activation) == (
        "learned",
        "layernorm",
        False,
        "gelu",
    )
    assert cfg.tie_embeddings and not cfg.zero_init_proj and cfg.logit_softcap == 0.0


@pytest.mark.parametrize(
    "kw, needle",
    [
        (dict(position="alibi"), "position='alibi'"),
        (dict(logit_softcap=float("nan")), "logit_softcap=nan"),
        (dict(logit_softcap=-1.0), "logit_softcap=-1.0"),
        (dict(rope_base=float("inf")), "rope_base=inf"),
        (dict(position="rope", n_embd=6, n_head=2), "even head size"),
    ],
)
def test_bad_options_are_named(kw, needle) -> None:
    with pytest.raises(ValueError, match="Invalid model config") as e:
        GPTConfig(**kw)
    assert needle in str(e.value)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_relu_squared_matches_autograd_through_relu_then_square(dtype: torch.dtype) -> None:
    x = torch.randn(64, 96, dtype=dtype)
    x[0, :8] = 0.0  # the kink: both give gradient 0 there
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad = torch.randn(64, 96, dtype=dtype)
    relu_squared(a).backward(grad)
    F.relu(b).square().backward(grad)
    assert torch.equal(relu_squared(x), F.relu(x).square())
    assert a.grad is not None and b.grad is not None
    assert torch.equal(a.grad, b.grad)
