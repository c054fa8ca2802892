"""Parity with transformers' GPT2LMHeadModel: same logits after export_hf and after load_hf.

Weights are a seeded random init (N(0, 0.02) matrices) with noise added to biases and
LayerNorm gains, which init leaves at 0 and 1, so no mis-mapped tensor can hide.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from gpt2repro import presets
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.pretrained import export_hf, load_hf

transformers = pytest.importorskip("transformers")

TOL = 1e-5  # fp32 CPU; observed: <1e-6 on tiny shapes, ~3e-6 at 124M


def perturb_vectors(model: torch.nn.Module) -> None:
    """Noise on biases and LayerNorm gains (the 1-D tensors), which init sets to 0 and 1."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.add_(0.02 * torch.randn_like(p))


def random_gpt(config: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    model = GPT(config)  # our init; padded embedding rows are zero
    perturb_vectors(model)
    return model.eval()


def max_logit_diff(ours: GPT, theirs: torch.nn.Module, B: int, T: int, seed: int = 1) -> float:
    idx = torch.randint(
        0, ours.config.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        a = ours(idx)  # (B, T, vocab_size)
        b = theirs(idx).logits  # (B, T, vocab_size)
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def hf_from(path: Path, attn: str = "eager") -> torch.nn.Module:
    return transformers.GPT2LMHeadModel.from_pretrained(path, attn_implementation=attn).eval()


TINY_CASES: dict[str, dict[str, Any]] = {
    "gpt2-vocab-padded": dict(vocab_size=50257, pad_vocab_to=64),
    "small-vocab-padded": dict(vocab_size=100, pad_vocab_to=64),
    "unpadded": dict(vocab_size=50257, pad_vocab_to=1),
    "no-bias": dict(vocab_size=50257, bias=False),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", list(TINY_CASES))
def test_export_matches_transformers(tmp_path: Path, case: str, attn: str) -> None:
    config = replace(presets.tiny_model(), **TINY_CASES[case])
    ours = random_gpt(config)
    theirs = hf_from(export_hf(ours, tmp_path / "hf"), attn)
    assert theirs.config.vocab_size == config.vocab_size
    assert theirs.transformer.wte.weight.shape == (config.vocab_size, config.n_embd)
    assert max_logit_diff(ours, theirs, B=4, T=config.block_size) < TOL


def test_124m_export_matches_transformers(tmp_path: Path) -> None:
    config = presets.gpt2_124m_model()
    assert config.padded_vocab_size == 50304  # the padded case, with the real shape
    ours = random_gpt(config)
    theirs = hf_from(export_hf(ours, tmp_path / "hf", tokenizer_spec="gpt2"))
    assert theirs.config.vocab_size == 50257
    assert theirs.config.n_positions == 1024
    assert max_logit_diff(ours, theirs, B=2, T=64) < TOL


@pytest.mark.parametrize("vocab_size", [50257, 100])
def test_load_transformers_model(tmp_path: Path, vocab_size: int) -> None:
    hf_config = transformers.GPT2Config(
        vocab_size=vocab_size, n_positions=64, n_embd=64, n_layer=2, n_head=2
    )
    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(hf_config).eval()
    perturb_vectors(theirs)
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_hf(tmp_path / "hf")
    assert ours.config.vocab_size == vocab_size and ours.config.bias
    assert ours.config.padded_vocab_size % 64 == 0
    assert max_logit_diff(ours, theirs, B=4, T=64) < TOL


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("pad_vocab_to", [64, 1])
def test_export_then_load_is_bit_identical(tmp_path: Path, bias: bool, pad_vocab_to: int) -> None:
    config = replace(presets.tiny_model(), bias=bias, pad_vocab_to=pad_vocab_to)
    ours = random_gpt(config)
    back = load_hf(export_hf(ours, tmp_path / "hf"), pad_vocab_to=pad_vocab_to)
    assert back.config == config
    a, b = ours.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert not b["transformer.wte.weight"][config.vocab_size :].any()
    assert back.lm_head.weight is back.transformer.wte.weight
    assert all(p.requires_grad for p in back.parameters())
