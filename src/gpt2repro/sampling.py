"""Autoregressive generation with a KV cache: temperature, top-k, top-p, seeds.

`generate(..., use_cache=False)` is the plain full-recompute reference that the cached
path is tested against; both crop the context to the model's block size the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpt2repro.model import GPT, KVCache


@dataclass
class SamplingConfig:
    """How to pick each next token."""

    max_new_tokens: int = 200
    """Tokens to generate after the prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 means greedy (always the most likely token)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (None: no limit)."""
    top_p: float | None = None
    """Keep the smallest set of tokens whose probability adds up to p (None: no limit)."""

    def __post_init__(self) -> None:
        problems = sampling_problems(self.max_new_tokens, self.temperature, self.top_k, self.top_p)
        if problems:
            raise ValueError("Invalid sampling settings: " + "; ".join(problems) + ".")


def sampling_problems(
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    flags: bool = False,
) -> list[str]:
    """Every bad setting, named as a field (`top_p=1.5`) or, with `flags`, as the command
    line's flag (`--top-p 1.5`), so a command can report them with its other arguments."""

    def named(name: str, value: object) -> str:
        return f"--{name.replace('_', '-')} {value}" if flags else f"{name}={value}"

    problems = []
    if max_new_tokens < 1:
        problems.append(f"{named('max_new_tokens', max_new_tokens)} must be >= 1")
    # An infinite temperature divides every logit to 0 (or NaN): no distribution is left.
    if not (math.isfinite(temperature) and temperature >= 0):
        finite = "" if math.isfinite(temperature) else "finite and "
        problems.append(f"{named('temperature', temperature)} must be {finite}>= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        problems.append(f"{named('top_k', top_k)} must be >= 1 (or None: off)")
    if top_p is not None and not 0.0 < top_p <= 1.0:  # also NaN
        problems.append(f"{named('top_p', top_p)} must be in (0, 1] (or None: off)")
    return problems


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set the logits of tokens outside the top-k / nucleus to -inf. `logits` is (B, V)."""
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens before it already reach top_p; the best one always stays.
        drop_sorted = (probs.cumsum(dim=-1) - probs) >= top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def next_token(
    logits: torch.Tensor, cfg: SamplingConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """Pick one token per row of `logits` (B, V); returns (B, 1)."""
    logits = logits.float()
    if cfg.temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p)
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def cache_dtype(param: torch.Tensor) -> torch.dtype:
    """The dtype attention's keys and values come out in: autocast's where it is on (a wider
    cache would only be cast back down at every step, over its whole length), else the weights'."""
    kind = param.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else param.dtype


def generate(
    model: GPT,
    prompt: torch.Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Continue `prompt` (B, T) by `cfg.max_new_tokens` tokens; returns (B, T + max_new_tokens).

    With the cache each step costs one token's forward pass. Once the sequence outgrows
    the context, both paths recompute over the last `block_size` tokens, so they agree.
    """
    block = model.config.block_size
    if prompt.size(1) < 1:
        raise ValueError(
            "The prompt must hold at least one token (use the end-of-text token to start fresh)."
        )
    if prompt.size(1) > block:
        raise ValueError(
            f"The prompt is {prompt.size(1)} tokens but the model's context is {block}. "
            f"Shorten the prompt to at most {block} tokens."
        )
    was_training = model.training
    model.eval()
    idx = prompt
    cache = None
    if use_cache:
        param = next(model.parameters())
        cache = KVCache(model.config, prompt.size(0), block, param.device, cache_dtype(param))
    logits = model(idx, cache=cache)[:, -1, :]  # (B, V)
    for step in range(cfg.max_new_tokens):
        tok = next_token(logits, cfg, generator)  # (B, 1)
        idx = torch.cat([idx, tok], dim=1)
        if step == cfg.max_new_tokens - 1:
            break
        if cache is not None and cache.pos < block:
            logits = model(tok, cache=cache)[:, -1, :]
        else:
            logits = model(idx[:, -block:])[:, -1, :]
    model.train(was_training)
    return idx
