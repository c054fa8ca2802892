"""Generation: the KV cache equals full recompute, seeds reproduce, filters keep the right tokens."""

from __future__ import annotations

import pytest
import torch

from gpt2repro import sampling
from gpt2repro.model import GPT
from gpt2repro.sampling import SamplingConfig, filter_logits, generate


@pytest.mark.parametrize("prompt_len,new", [(1, 20), (5, 27), (30, 10)])
def test_cache_matches_recompute_under_greedy(tiny_model: GPT, prompt_len: int, new: int) -> None:
    # (30, 10) runs past the 32-token context, where both paths slide the window.
    torch.manual_seed(prompt_len)
    prompt = torch.randint(0, 97, (3, prompt_len))
    cfg = SamplingConfig(max_new_tokens=new, temperature=0.0)
    cached = generate(tiny_model, prompt, cfg, use_cache=True)
    plain = generate(tiny_model, prompt, cfg, use_cache=False)
    assert cached.shape == (3, prompt_len + new)
    assert torch.equal(cached, plain)
    assert torch.equal(cached[:, :prompt_len], prompt)


def test_greedy_is_argmax_of_full_forward(tiny_model: GPT) -> None:
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    out = generate(tiny_model, prompt, SamplingConfig(max_new_tokens=1, temperature=0.0))
    assert out[0, -1].item() == tiny_model(prompt)[0, -1].argmax().item()


def test_same_seed_same_tokens(tiny_model: GPT) -> None:
    prompt = torch.zeros(4, 1, dtype=torch.long)
    cfg = SamplingConfig(max_new_tokens=25, temperature=1.0, top_k=50, top_p=0.95)
    a = generate(tiny_model, prompt, cfg, torch.Generator().manual_seed(7))
    b = generate(tiny_model, prompt, cfg, torch.Generator().manual_seed(7))
    c = generate(tiny_model, prompt, cfg, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert int(a.max()) < 97  # never a padded row


def test_top_k_one_and_tiny_top_p_are_greedy(tiny_model: GPT) -> None:
    prompt = torch.randint(0, 97, (2, 4))
    greedy = generate(tiny_model, prompt, SamplingConfig(max_new_tokens=12, temperature=0.0))
    for cfg in (SamplingConfig(12, 1.0, top_k=1), SamplingConfig(12, 1.0, top_p=1e-6)):
        assert torch.equal(
            generate(tiny_model, prompt, cfg, torch.Generator().manual_seed(0)), greedy
        )


def test_filter_logits_against_closed_form() -> None:
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.15]])
    logits = probs.log()
    kept = lambda out: torch.isfinite(out[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=2, top_p=None)) == [0, 2]
    # The smallest set whose mass reaches p: {0} for p<=0.5, {0,2} for p<=0.8, then add 3.
    assert kept(filter_logits(logits, top_k=None, top_p=0.5)) == [0]
    assert kept(filter_logits(logits, top_k=None, top_p=0.7)) == [0, 2]
    assert kept(filter_logits(logits, top_k=None, top_p=0.9)) == [0, 2, 3]
    assert kept(filter_logits(logits, top_k=None, top_p=1.0)) == [0, 1, 2, 3]
    assert kept(filter_logits(logits, top_k=3, top_p=0.7)) == [0, 2]


def reference_probs(
    logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None
) -> torch.Tensor:
    """softmax(logits / temperature) cut to the top-k or the nucleus and renormalised (float64)."""
    probs = torch.softmax(logits.double() / temperature, dim=-1)
    kept: list[int] = []
    mass = 0.0
    for token in probs.argsort(descending=True).tolist():
        if (top_k is not None and len(kept) == top_k) or (top_p is not None and mass >= top_p):
            break
        kept.append(token)
        mass += float(probs[token])
    out = torch.zeros_like(probs)
    out[kept] = probs[kept]
    return out / out.sum()


def within_sampling_noise(freq: torch.Tensor, probs: torch.Tensor, n: int) -> bool:
    """Every token's frequency within 4 sigma of its probability (plus one count of slack)."""
    sigma = (probs * (1 - probs) / n).sqrt()
    return bool(((freq - probs).abs() <= 4 * sigma + 1 / n).all())


SAMPLES = 20_000


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"),
    [(1.0, None, None), (0.6, None, None), (1.6, None, None), (1.0, 5, None), (0.6, 12, None),
     (1.0, None, 0.5)],
)  # fmt: skip
def test_sampling_follows_the_distribution(
    tiny_model: GPT, temperature: float, top_k: int | None, top_p: float | None
) -> None:
    """Token frequencies match softmax(logits / temperature), renormalised over the kept tokens."""
    # The tiny model's logits are nearly flat (all 97 probabilities within 0.005 of uniform):
    # a larger LayerNorm gain scales them 8x, so the top token has p = 0.16 at temperature 1.
    with torch.no_grad():
        tiny_model.transformer.ln_f.weight.mul_(8.0)
    prompt = torch.tensor([[5, 6, 7]]).repeat(SAMPLES, 1)
    cfg = SamplingConfig(1, temperature, top_k=top_k, top_p=top_p)
    out = generate(tiny_model, prompt, cfg, torch.Generator().manual_seed(0))
    freq = torch.bincount(out[:, -1], minlength=97).double() / SAMPLES
    with torch.no_grad():
        logits = tiny_model(prompt[:1])[0, -1]
    probs = reference_probs(logits, temperature, top_k, top_p)
    assert freq[probs == 0].sum() == 0  # filtered tokens never appear
    assert within_sampling_noise(freq, probs, SAMPLES)
    if (temperature, top_k, top_p) != (1.0, None, None):
        # The case can fail: plain softmax sampling would be far outside the noise.
        plain = reference_probs(logits, 1.0, None, None)
        assert not within_sampling_noise(plain, probs, SAMPLES)


def test_bad_settings_and_prompts(tiny_model: GPT) -> None:
    with pytest.raises(ValueError, match="temperature=-1"):
        SamplingConfig(temperature=-1)
    with pytest.raises(ValueError, match=r"top_p=1\.5"):
        SamplingConfig(top_p=1.5)
    with pytest.raises(ValueError, match="context is 32"):
        generate(tiny_model, torch.zeros(1, 33, dtype=torch.long), SamplingConfig(1))


def test_cache_takes_autocasts_dtype_with_the_same_tokens(
    tiny_model: GPT, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under bf16 autocast keys and values are bf16 already: a bf16 cache stores them
    exactly as an fp32 one would, at half the memory and without a cast per step."""
    made: list[torch.dtype] = []
    real_cache = sampling.KVCache

    def recording_cache(*args: object) -> object:
        cache = real_cache(*args)  # type: ignore[arg-type]
        made.append(cache.k.dtype)
        return cache

    monkeypatch.setattr(sampling, "KVCache", recording_cache)
    prompt = torch.randint(0, tiny_model.config.vocab_size, (2, 5))
    cfg = SamplingConfig(max_new_tokens=20, temperature=0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_cache = generate(tiny_model, prompt, cfg)
        monkeypatch.setattr(sampling, "cache_dtype", lambda param: torch.float32)
        fp32_cache = generate(tiny_model, prompt, cfg)
    assert made == [torch.bfloat16, torch.float32]
    assert torch.equal(bf16_cache, fp32_cache)
