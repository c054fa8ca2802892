"""Parity with transformers' NanoChatForCausalLM for the modern options: the same logits
from our model and from NanoChat loaded with our converted weights, and back again.

The weights are a seeded normal init everywhere (zero_init_proj off), so a mis-mapped
projection, a wrong rotation sign or a norm in the wrong place cannot hide.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gpt2repro.model import GPT, GPTConfig, modern_model_options
from gpt2repro.nanochat import (
    GPT2_CLASS,
    NANOCHAT_CLASS,
    from_nanochat,
    gpt_config_from_nanochat,
    nanochat_config,
    stock_class,
    to_nanochat,
)
from gpt2repro.presets import tiny

transformers = pytest.importorskip("transformers")
TOL = 1e-5  # fp32 CPU


def modern(**kw) -> GPTConfig:
    cfg = modern_model_options(tiny(), logit_softcap=15.0)
    return replace(cfg, vocab_size=100, zero_init_proj=False, **kw)


def hf_nanochat(model: GPT) -> torch.nn.Module:
    cfg = transformers.NanoChatConfig(**nanochat_config(model.config, torch.float32, 0))
    hf = transformers.NanoChatForCausalLM(cfg).eval()
    missing, unexpected = hf.load_state_dict(to_nanochat(model), strict=False)
    assert not unexpected, unexpected
    assert set(missing) <= {"lm_head.weight"} and (missing == [] or model.config.tie_embeddings)
    if model.config.tie_embeddings:
        hf.tie_weights()
    return hf


@pytest.mark.parametrize(
    "kw",
    [{}, {"tie_embeddings": True}, {"logit_softcap": 0.0}, {"rope_base": 500.0}],
    ids=["untied-capped", "tied", "no-cap", "rope-base-500"],
)
def test_logits_equal_nanochat_both_ways(kw) -> None:
    torch.manual_seed(0)
    ours = GPT(modern(**kw)).eval()
    hf = hf_nanochat(ours)
    idx = torch.randint(0, 100, (2, 33), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(idx), hf(idx).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() < TOL
    # ...and back: NanoChat's config and weights give our model the same logits.
    hf_cfg = hf.config.to_dict()
    back_cfg = gpt_config_from_nanochat(hf_cfg, pad_vocab_to=64)
    assert back_cfg == replace(ours.config, zero_init_proj=False)
    back = GPT(back_cfg).eval()
    back.load_state_dict(from_nanochat(hf.state_dict(), back_cfg))
    with torch.no_grad():
        assert (back(idx) - b).abs().max().item() < TOL


def test_nanochat_generation_cache_equals_ours() -> None:
    """HF's own cached greedy decoding against our logits on its output (RoPE offsets)."""
    torch.manual_seed(0)
    ours = GPT(modern()).eval()
    hf = hf_nanochat(ours)
    prompt = torch.randint(0, 100, (1, 5), generator=torch.Generator().manual_seed(2))
    out = hf.generate(prompt, max_new_tokens=10, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        greedy = ours(out[:, :-1]).argmax(-1)[:, 4:]
    assert torch.equal(greedy, out[:, 5:])


def test_stock_class_is_named_for_each_architecture_and_mixtures_refused() -> None:
    assert stock_class(GPTConfig()) == GPT2_CLASS
    assert stock_class(modern()) == NANOCHAT_CLASS
    with pytest.raises(ValueError) as e:
        stock_class(replace(GPTConfig(), position="rope"))
    assert "position='rope'" in str(e.value) and "qk_norm=False" in str(e.value)
    with pytest.raises(ValueError, match="bias=True"):
        stock_class(replace(modern(), bias=True))
