"""FLOPs per token, the numerator of MFU, against the PaLM / nanoGPT closed form.

PaLM (Chowdhery et al. 2022, appendix B) and nanoGPT's `estimate_mfu` count a training token
as 6N FLOPs for the weight matmuls (2 forward, 4 backward) plus 12 * L * T * C for the
attention scores and their weighted sum, with N the parameters that take part in a matmul:
every parameter except the position embedding (the tied token embedding is the head's matmul).
"""

from __future__ import annotations

import pytest
import torch

from gpt2repro.metrics import flops_per_token
from gpt2repro.model import GPT, GPTConfig


def gpt2_params(cfg: GPTConfig) -> int:
    """GPT-2's parameter count from its architecture, the tied head counted once, no padding."""
    C, L = cfg.n_embd, cfg.n_layer
    ln = 2 * C if cfg.bias else C  # LayerNorm gain (and bias)
    linear_bias = 9 * C if cfg.bias else 0  # c_attn 3C, attn c_proj C, c_fc 4C, mlp c_proj C
    block = 2 * ln + 12 * C * C + linear_bias  # qkv 3C^2, proj C^2, MLP 8C^2
    return cfg.vocab_size * C + cfg.block_size * C + L * block + ln


def palm_flops(cfg: GPTConfig, seq_len: int) -> int:
    n = gpt2_params(cfg) - cfg.block_size * cfg.n_embd  # without the position embedding
    return 6 * n + 12 * cfg.n_layer * seq_len * cfg.n_embd


def test_gpt2_124m_at_1024_tokens() -> None:
    cfg = GPTConfig()  # GPT-2 small: 12 layers, width 768, 50,257 tokens, 1,024 positions
    with torch.device("meta"):
        n = GPT(cfg).num_params()  # what session.py, plan.py and bench_train.py pass
    assert n == gpt2_params(cfg) == 124_439_808  # GPT-2 small's published count
    # 6 * 123,653,376 + 12 * 12 * 1024 * 768, worked out by hand.
    assert flops_per_token(cfg, 1024, n) == 741_920_256 + 113_246_208 == 855_166_464


@pytest.mark.parametrize(
    ("cfg", "seq_len"),
    [
        (GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32), 32),
        (GPTConfig(vocab_size=300, block_size=64, n_layer=3, n_head=4, n_embd=64, bias=False), 16),
        (GPTConfig(n_layer=24, n_head=16, n_embd=1024), 512),  # GPT-2 medium, shorter sequences
    ],
)
def test_matches_the_closed_form_for_any_shape(cfg: GPTConfig, seq_len: int) -> None:
    with torch.device("meta"):
        gpt = GPT(cfg)
    assert gpt.num_params() == gpt2_params(cfg)
    assert flops_per_token(cfg, seq_len, gpt.num_params()) == palm_flops(cfg, seq_len)
    # The docstring's N: the model's own count without the position embedding.
    attention = 12 * cfg.n_layer * seq_len * cfg.n_embd
    non_embedding = gpt.num_params(exclude_embeddings=True)
    assert flops_per_token(cfg, seq_len, gpt.num_params()) == 6 * non_embedding + attention


def test_modern_options_count_only_the_matmuls() -> None:
    """RoPE has no position table; an untied head's input embedding is a lookup, its head a
    matmul: N is the blocks' matrices plus one vocab x C head, as for GPT-2's tied head."""
    from gpt2repro.presets import modern_model_options

    cfg = modern_model_options(GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=300))
    with torch.device("meta"):
        n = GPT(cfg).num_params()
    C, L = 64, 2
    assert n == 2 * 300 * C + L * 12 * C * C  # no biases, weight-free norms
    assert flops_per_token(cfg, 128, n) == 6 * (300 * C + L * 12 * C * C) + 12 * L * 128 * C
