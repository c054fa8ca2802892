"""The recipe's numeric pieces against their references: closed-form schedule, AdamW groups."""

from __future__ import annotations

import math

import pytest
import torch

from gpt2repro.config import OptimConfig
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.training.optimizer import build_optimizer, lr_at, param_groups


def test_schedule_matches_closed_form() -> None:
    cfg = OptimConfig(lr=6e-4, min_lr=6e-5, warmup_steps=10)
    max_steps = 110
    for step in range(0, 130):
        if step < 10:
            expected = 6e-4 * (step + 1) / 10
        elif step >= max_steps:
            expected = 6e-5
        else:
            ratio = (step - 10) / (max_steps - 10)
            expected = 6e-5 + (6e-4 - 6e-5) * (1 + math.cos(math.pi * ratio)) / 2
        assert lr_at(step, cfg, max_steps) == pytest.approx(expected, rel=1e-12), step
    assert lr_at(9, cfg, max_steps) == pytest.approx(6e-4)  # warmup ends at the peak
    assert lr_at(60, cfg, max_steps) == pytest.approx((6e-4 + 6e-5) / 2)  # cosine midpoint


def test_decay_steps_decouple_from_run_length() -> None:
    cfg = OptimConfig(lr=1.0, min_lr=0.0, warmup_steps=0, decay_steps=100)
    assert lr_at(50, cfg, max_steps=10) == pytest.approx(0.5)
    assert lr_at(150, cfg, max_steps=200) == 0.0


def test_weight_decay_only_on_matrices() -> None:
    model = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=2, n_head=2, n_embd=16))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}  # type: ignore[attr-defined]
    plain = {names[id(p)] for p in no_decay["params"]}  # type: ignore[attr-defined]
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "transformer.wte.weight" in decayed and "transformer.wpe.weight" in decayed
    assert "transformer.h.0.attn.c_attn.weight" in decayed
    assert all(n.endswith("bias") or ".ln_" in n for n in plain)
    assert "transformer.ln_f.weight" in plain and "transformer.h.1.mlp.c_fc.bias" in plain
    assert len(decayed) + len(plain) == len(list(model.parameters()))  # tied head counted once


@pytest.mark.parametrize("fused", [False, True])
def test_optimizer_equals_reference_adamw(fused: bool) -> None:
    """Same groups, same kernel: bit-equal to torch's AdamW; fused vs the default kernel: rounding."""
    torch.manual_seed(0)
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95)
    # No biases: the key bias has an exactly-zero true gradient, and Adam would turn the two
    # kernels' different rounding noise there into lr-sized steps.
    a = GPT(GPTConfig(vocab_size=50, block_size=8, n_layer=1, n_head=2, n_embd=16, bias=False))
    models = [GPT(a.config) for _ in range(2)]
    for m in models:
        m.load_state_dict(a.state_dict())
    ours = build_optimizer(a, cfg, torch.device("cpu"))
    assert ours.defaults["fused"] is True  # the CPU default
    refs = []
    for m, ref_fused in zip(models, (fused, not fused), strict=True):
        decay = [p for p in m.parameters() if p.dim() >= 2]
        rest = [p for p in m.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
        refs.append(
            torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=ref_fused or None)
        )
    if not fused:
        ours = build_optimizer(
            a, OptimConfig(**{**cfg.__dict__, "fused": False}), torch.device("cpu")
        )
    x = torch.randint(0, 50, (2, 8))
    for _ in range(3):
        for model, opt in ((a, ours), (models[0], refs[0]), (models[1], refs[1])):
            opt.zero_grad()
            model(x, x).backward()
            opt.step()
    for (name, p), q, r in zip(
        a.named_parameters(), models[0].parameters(), models[1].parameters(), strict=True
    ):
        assert torch.equal(p, q), name
        torch.testing.assert_close(p, r, rtol=1e-5, atol=1e-6, msg=name)
