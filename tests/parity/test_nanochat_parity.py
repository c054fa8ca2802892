"""Parity with transformers' NanoChatForCausalLM for the modern options: the same logits
from our model and from NanoChat loaded with our converted weights, and back again.

The weights are a seeded normal init everywhere (zero_init_proj off), so a mis-mapped
projection, a wrong rotation sign or a norm in the wrong place cannot hide.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gpt2repro import presets
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.nanochat import (
    GPT2_CLASS,
    NANOCHAT_CLASS,
    from_nanochat,
    gpt_config_from_nanochat,
    nanochat_config,
    stock_class,
    to_nanochat,
)
from gpt2repro.presets import modern_model_options

transformers = pytest.importorskip("transformers")
TOL = 1e-5  # fp32 CPU


def modern(**kw) -> GPTConfig:
    cfg = modern_model_options(presets.tiny_model(), logit_softcap=15.0)
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


def test_export_loads_with_automodel_and_matches_both_ways(tmp_path) -> None:
    """`export_hf` of a modern model: transformers' own class with no custom code, the same
    logits, the same token ids from AutoTokenizer, and load_hf back to the same model."""
    from gpt2repro.pretrained import export_hf, load_hf
    from gpt2repro.tokenizer import GPT2Tokenizer

    torch.manual_seed(0)
    ours = GPT(replace(modern(), vocab_size=50257)).eval()
    out = export_hf(ours, tmp_path / "export", "gpt2")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == NANOCHAT_CLASS
    text = "Hello world, the modern recipe speaks."
    ids = transformers.AutoTokenizer.from_pretrained(out)(text)["input_ids"]
    assert ids == GPT2Tokenizer().encode(text)
    idx = torch.tensor([ids])
    with torch.no_grad():
        a, b = ours(idx), hf(idx).logits
    assert (a - b).abs().max().item() < TOL
    back = load_hf(out)
    assert back.config == replace(ours.config, zero_init_proj=False)
    with torch.no_grad():
        assert (back(idx) - a).abs().max().item() < TOL


def test_export_refuses_a_model_no_stock_class_holds(tmp_path) -> None:
    from gpt2repro.pretrained import export_hf

    model = GPT(replace(presets.tiny_model(), vocab_size=100, position="rope"))
    with pytest.raises(ValueError, match="position='rope'"):
        export_hf(model, tmp_path / "export")
    assert not (tmp_path / "export").exists()
