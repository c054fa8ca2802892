"""The modern recipe (Muon, warmup-stable-decay, RoPE, QK-norm, ReLU², untied head, softcap)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gpt2repro.config import (
    BatchConfig,
    DataConfig,
    EvalConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from gpt2repro.model import GPTConfig
from gpt2repro.presets.classic import shakespeare_cpu
from gpt2repro.presets.shapes import gpt2_124m_model, gpt2_350m_model


def modern_model_options(config: GPTConfig, logit_softcap: float = 15.0) -> GPTConfig:
    """`config` with every modern option on: the architecture transformers holds as NanoChat."""
    return replace(
        config,
        position="rope",
        norm="rmsnorm",
        qk_norm=True,
        activation="relu2",
        tie_embeddings=False,
        zero_init_proj=True,
        logit_softcap=logit_softcap,
        bias=False,
    )


def modern_shakespeare_cpu() -> TrainConfig:
    """The default run: `shakespeare_cpu`'s data, tokenizer, batch and training time with the
    modern recipe: every architecture option of `modern_model_options` (RoPE, weight-free
    RMSNorm, QK-norm, ReLU², an untied zero-initialised head, logits capped at 15), Muon for
    the blocks' matrices (Nesterov 0.95, warmed up from 0.85), AdamW for the embedding and
    head, and a warmup-stable-decay schedule. The learning rates are scaled from nanochat
    and modded-nanogpt to this batch (4,096 tokens a step); the decay over the last 80% of
    the steps is the one change that a one-at-a-time sweep of Muon's, the embedding's and
    the head's learning rates, the decay fraction and Muon's weight decay found beyond a
    seed's noise (benchmarks/sweep_modern_cpu.py; results and the comparison with
    shakespeare_cpu in benchmarks/results/, dated 2026-12-07).
    """
    cfg = shakespeare_cpu()
    return replace(
        cfg,
        model=modern_model_options(cfg.model, logit_softcap=15.0),
        optim=OptimConfig(
            optimizer="muon",
            muon_lr=0.02,
            muon_momentum=0.95,
            muon_momentum_start=0.85,
            muon_momentum_warmup_steps=100,
            lr=2e-3,
            embed_lr=0.02,
            head_lr=4e-3,
            weight_decay=0.0,
            beta2=0.99,
            min_lr=0.0,
            warmup_steps=50,
            schedule="wsd",
            decay_fraction=0.8,
        ),
        # 500 steps take about the 700 of shakespeare_cpu's training time (bench recipes
        # sized the modern recipe to 498 on the 2-core Intel AMX VM, 2026-12-07).
        run=replace(cfg.run, max_steps=500, out_dir=Path("runs_out/modern_shakespeare_cpu")),
        eval=replace(cfg.eval, interval=250),
        checkpoint=replace(cfg.checkpoint, interval=250),
    )


def _modern_fineweb_edu(model: GPTConfig, max_steps: int, micro_batch: int) -> TrainConfig:
    """FineWeb-Edu with the modern recipe at nanochat's settings for a 768-wide model
    (Muon 0.02, embedding 0.2 and head 0.004 with AdamW (0.8, 0.95), no weight decay,
    linear decay to 0 over the last 20% of the run) and modded-nanogpt's Muon momentum
    warm-up (0.85 -> 0.95 over 300 steps); 2**19 tokens a step."""
    return TrainConfig(
        model=modern_model_options(model, logit_softcap=15.0),
        data=DataConfig(dataset="fineweb-edu"),
        optim=OptimConfig(
            optimizer="muon",
            muon_lr=0.02,
            muon_momentum_warmup_steps=300,
            lr=0.004,
            embed_lr=0.2,
            head_lr=0.004,
            beta1=0.8,
            beta2=0.95,
            weight_decay=0.0,
            min_lr=0.0,
            warmup_steps=0,
            schedule="wsd",
            decay_fraction=0.2,
        ),
        batch=BatchConfig(tokens_per_step=1 << 19, micro_batch=micro_batch, seq_len=1024),
        run=RunConfig(max_steps=max_steps),
        eval=EvalConfig(hellaswag=True),
    )


def modern_124m_fineweb_edu() -> TrainConfig:
    """GPT-2 small's shape (12 x 768, 6 heads of 128 as in modded-nanogpt) with the modern
    recipe for 1,500 steps = 0.79B tokens: modded-nanogpt's scale of run that reaches GPT-2's
    FineWeb loss, 13x fewer tokens than the classic `gpt2_124m_fineweb_edu` (10B)."""
    return _modern_fineweb_edu(replace(gpt2_124m_model(), n_head=6), 1_500, micro_batch=64)


def modern_350m_fineweb_edu() -> TrainConfig:
    """GPT-2 medium's shape (24 x 1024, 8 heads of 128) with the modern recipe for 7,000
    steps = 3.7B tokens, about nanochat's ~10 tokens per parameter for its speedrun models."""
    return _modern_fineweb_edu(replace(gpt2_350m_model(), n_head=8), 7_000, micro_batch=32)
