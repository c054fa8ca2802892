"""Fine-tuning runs: training that starts from pretrained weights (`init.source`)."""

from __future__ import annotations

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
from gpt2repro.presets.modern import modern_shakespeare_cpu
from gpt2repro.presets.shapes import gpt2_1558m_model


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
"""Measured against 3e-4 and 3e-5 from modern_shakespeare_cpu sources (README, fine-tuning)."""


def finetune_shakespeare_cpu() -> TrainConfig:
    """The default run's model fine-tuned further on Shakespeare, in a few minutes on a CPU.

    Starts from the default run's directory (`gpt2repro train` writes it; its best, else its
    newest checkpoint) with that run's shape and tokenizer; AdamW at a constant, small
    learning rate (no warmup: the weights are already trained, and a jump in the rate would
    undo them), 150 steps of 32 x 128 tokens, evaluated every 50 steps.
    """
    base = modern_shakespeare_cpu()
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
