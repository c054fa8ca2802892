"""Warmup-stable-decay against its closed form; Muon + AdamW against torch's own optimizers
stepped by hand; its state dict round trip resuming bit for bit."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gpt2repro import presets
from gpt2repro.config import OptimConfig
from gpt2repro.model import GPT
from gpt2repro.presets import modern_model_options
from gpt2repro.training.optimizer import (
    MuonAdamW,
    apply_schedule,
    build_optimizer,
    lr_at,
    muon_momentum_at,
    muon_params,
)


def test_wsd_matches_closed_form() -> None:
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, schedule="wsd", decay_fraction=0.25)
    T = 200  # decay over the last 50 steps: 150..199, reaching min_lr at step 200
    for step in range(0, 220):
        if step < 10:
            want = 1e-3 * (step + 1) / 10
        elif step < 150:
            want = 1e-3
        else:
            want = 1e-3 + min(1.0, (step - 150) / 50) * (1e-4 - 1e-3)
        assert lr_at(step, cfg, T) == pytest.approx(want, rel=1e-12, abs=1e-15), step
    assert lr_at(175, cfg, T) == pytest.approx((1e-3 + 1e-4) / 2)  # halfway down
    assert lr_at(199, cfg, T) == pytest.approx(1e-4 + 0.02 * (1e-3 - 1e-4))


def test_momentum_warmup_is_linear() -> None:
    cfg = OptimConfig(muon_momentum_start=0.85, muon_momentum=0.95, muon_momentum_warmup_steps=300)
    assert muon_momentum_at(0, cfg) == 0.85
    assert muon_momentum_at(150, cfg) == pytest.approx(0.90)
    assert muon_momentum_at(300, cfg) == muon_momentum_at(10**6, cfg) == 0.95
    assert muon_momentum_at(0, replace(cfg, muon_momentum_warmup_steps=0)) == 0.95


def modern_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = replace(
        modern_model_options(presets.tiny_model()), vocab_size=50, zero_init_proj=False, bias=False
    )
    return GPT(cfg)


CFG = OptimConfig(
    optimizer="muon",
    lr=3e-3,
    embed_lr=0.1,
    head_lr=5e-3,
    muon_lr=0.05,
    weight_decay=0.1,
    muon_weight_decay=0.01,
    warmup_steps=2,
    schedule="wsd",
    decay_fraction=0.5,
    muon_momentum_warmup_steps=3,
    fused=False,
)


def test_muon_split_puts_only_block_matrices_in_muon() -> None:
    model = modern_model()
    matrices, rest = muon_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in matrices} == {
        n for n, p in model.named_parameters() if ".h." in n and p.dim() == 2
    }
    assert [names[id(p)] for p in rest["embed"]] == ["transformer.wte.weight"]
    assert [names[id(p)] for p in rest["head"]] == ["lm_head.weight"]


def steps(model: GPT, opt: torch.optim.Optimizer, n: int, start: int = 0, ref=None) -> None:
    x = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(7))
    for step in range(start, start + n):
        if ref is None:
            apply_schedule(opt, step, CFG, max_steps=6)
        else:
            ref(step)
        opt.zero_grad()
        model(x, x).backward()
        opt.step()


def test_muon_adamw_equals_torch_optimizers_stepped_by_hand() -> None:
    ours, theirs = modern_model(), modern_model()
    opt = build_optimizer(ours, CFG, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    p = dict(theirs.named_parameters())
    blocks = [t for n, t in p.items() if ".h." in n and t.dim() == 2]
    muon = torch.optim.Muon(
        blocks, lr=0.05, weight_decay=0.01, momentum=0.95, nesterov=True, adjust_lr_fn="original"
    )
    adam = torch.optim.AdamW(
        [
            {"params": [p["transformer.wte.weight"]], "lr": 0.1, "weight_decay": 0.1},
            {"params": [p["lm_head.weight"]], "lr": 5e-3, "weight_decay": 0.1},
        ],
        betas=(0.9, 0.95),
        eps=1e-8,
        fused=False,
    )

    class Both(torch.optim.Optimizer):  # the reference: two torch optimizers, by hand
        def __init__(self) -> None:
            self.param_groups = adam.param_groups + muon.param_groups

        def zero_grad(self, set_to_none: bool = True) -> None:
            adam.zero_grad(), muon.zero_grad()

        def step(self, closure=None) -> None:  # type: ignore[override]
            adam.step(), muon.step()

    def schedule(step: int) -> None:
        f = lr_at(step, CFG, 6) / CFG.lr
        adam.param_groups[0]["lr"], adam.param_groups[1]["lr"] = 0.1 * f, 5e-3 * f
        muon.param_groups[0]["lr"] = 0.05 * f
        muon.param_groups[0]["momentum"] = 0.85 + min(step / 3, 1.0) * (0.95 - 0.85)

    steps(ours, opt, 6)
    steps(theirs, Both(), 6, ref=schedule)
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b), name
    assert opt.param_groups[-1]["lr"] == pytest.approx(0.05 * lr_at(5, CFG, 6) / CFG.lr)


def test_state_dict_round_trip_resumes_bit_for_bit() -> None:
    straight = modern_model()
    opt = build_optimizer(straight, CFG, torch.device("cpu"))
    steps(straight, opt, 6)

    first = modern_model()
    opt1 = build_optimizer(first, CFG, torch.device("cpu"))
    steps(first, opt1, 3)
    saved = opt1.state_dict()
    assert sorted(saved["state"]) == list(range(len(list(first.parameters()))))
    resumed = modern_model(seed=99)
    resumed.load_state_dict(first.state_dict())
    opt2 = build_optimizer(resumed, CFG, torch.device("cpu"))
    opt2.load_state_dict(saved)
    steps(resumed, opt2, 3, start=3)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_muon_state_refuses_another_layout() -> None:
    model = modern_model()
    opt = build_optimizer(model, CFG, torch.device("cpu"))
    adamw = build_optimizer(model, replace(CFG, optimizer="adamw"), torch.device("cpu"))
    with pytest.raises(ValueError, match="parameter groups"):
        opt.load_state_dict(adamw.state_dict())


def test_classic_groups_keep_lr_exactly() -> None:
    model = modern_model()
    cfg = OptimConfig(lr=3e-4, min_lr=3e-5, warmup_steps=3)
    opt = build_optimizer(model, cfg, torch.device("cpu"))
    for step in range(10):
        lr = apply_schedule(opt, step, cfg, 10)
        assert all(g["lr"] == lr == lr_at(step, cfg, 10) for g in opt.param_groups)
