"""Typed training configuration: nested dataclasses, each field with a default and a docstring.

`gpt2repro train --preset NAME --optim.lr 3e-4 ...` starts from a preset (presets.py)
and overrides fields by their dotted names; tyro rejects unknown names and bad types.
`TrainConfig.validate()` collects every inconsistency into one error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from gpt2repro.model import GPTConfig


@dataclass
class DataConfig:
    """Which prepared token shards to train and validate on."""

    dataset: str = "shakespeare"
    """Dataset name as given to `gpt2repro prepare` (its folder under data_root)."""
    data_root: Path = Path("data")
    """Folder holding prepared datasets."""
    tokenizer: str = "gpt2"
    """gpt2, a tokenizer .json file, or `train:N` to train an N-token byte-level BPE on the training split."""
    prepare_if_missing: bool = True
    """Run `gpt2repro prepare` for the dataset when it has not been prepared yet."""


@dataclass
class OptimConfig:
    """AdamW with weight decay on matrices only, and gradient clipping."""

    lr: float = 6e-4
    """Peak learning rate, reached at the end of warmup."""
    min_lr: float = 6e-5
    """Learning rate at the end of the cosine decay."""
    warmup_steps: int = 715
    """Linear warmup from 0 to lr over this many steps."""
    decay_steps: int | None = None
    """Step at which the cosine reaches min_lr (None: the last training step)."""
    weight_decay: float = 0.1
    """Decoupled weight decay, applied to parameters with 2 or more dimensions."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    fused: bool | None = None
    """Fused AdamW kernel (None: on where the device supports it)."""


@dataclass
class BatchConfig:
    """How many tokens each optimizer step sees, and how they are split."""

    tokens_per_step: int = 524_288
    """Tokens per optimizer step across all ranks (2**19, as in GPT-3 small)."""
    micro_batch: int = 64
    """Sequences per forward/backward on one rank."""
    seq_len: int = 1024
    """Tokens per sequence (at most the model's block_size)."""


@dataclass
class RunConfig:
    """Length of the run, precision and compilation."""

    max_steps: int = 19_073
    """Optimizer steps to train for."""
    max_minutes: float | None = None
    """Stop (with a checkpoint and final evaluation) after this much training time."""
    dtype: str = "auto"
    """auto (bf16 on CUDA with bf16 support, fp16 on older GPUs; on CPU bf16 where native, else fp32), fp32, bf16 or fp16."""
    compile: bool | None = None
    """torch.compile the model (None: on for CUDA, off on CPU)."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    parallel: str = "ddp"
    """With several processes: ddp (a full replica per rank) or fsdp (weights, gradients and optimizer state sharded across ranks, for models too large to replicate)."""
    seed: int = 1337
    """Seed for initialisation, data order and sampling."""
    out_dir: Path = Path("runs_out/default")
    """Run directory: config, metrics, checkpoints, samples, plots."""


@dataclass
class EvalConfig:
    """Periodic validation and samples."""

    interval: int = 250
    """Evaluate every this many steps (and at the end); 0 disables."""
    val_tokens: int = 10_485_760
    """Validation token budget per evaluation (fixed, so runs compare)."""
    sample_interval: int = 1000
    """Write samples every this many steps (and at the end); 0 disables."""
    sample_tokens: int = 64
    """New tokens per sample."""
    sample_prompt: str = "\n"
    """Prompt for samples."""
    hellaswag: bool = False
    """Also score HellaSwag (completion style, acc_norm) at each evaluation."""
    hellaswag_path: Path | None = None
    """Local hellaswag_val.jsonl (None: download once and cache)."""
    hellaswag_limit: int | None = None
    """Score only the first N examples (None: all 10,042)."""


@dataclass
class CheckpointConfig:
    """When to save, how many to keep, and where to resume from."""

    interval: int = 1000
    """Save every this many steps (and at the end); 0 saves only at the end."""
    keep_last: int = 2
    """Keep this many recent checkpoints (the best one is kept in addition)."""
    resume: str = "none"
    """none, auto (newest valid checkpoint in out_dir, if any) or a checkpoint directory."""


@dataclass
class LogConfig:
    """Where and how often metrics go."""

    interval: int = 10
    """Log every this many steps."""
    tensorboard: bool = True
    """Also write TensorBoard event files (when tensorboard is installed)."""
    wandb: bool = False
    """Also log to Weights & Biases (when wandb is installed)."""
    wandb_project: str = "gpt2repro"
    """W&B project name."""


@dataclass
class StabilityConfig:
    """What to do about non-finite or spiking losses."""

    max_bad_steps: int = 5
    """Stop after this many consecutive skipped (non-finite) steps."""
    spike_zscore: float | None = None
    """Also skip steps whose loss is this many standard deviations above the recent mean (None: off)."""


@dataclass
class TrainConfig:
    """Everything a training run needs; presets.py holds named instances."""

    model: GPTConfig = field(default_factory=GPTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    run: RunConfig = field(default_factory=RunConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    stability: StabilityConfig = field(default_factory=StabilityConfig)

    def grad_accum_steps(self, world_size: int) -> int:
        """Micro-steps per optimizer step on each rank; raises when the batch does not divide."""
        per_micro = self.batch.micro_batch * self.batch.seq_len * world_size
        if self.batch.tokens_per_step % per_micro != 0:
            raise ValueError(
                f"tokens_per_step={self.batch.tokens_per_step} is not a multiple of "
                f"micro_batch*seq_len*world_size = {self.batch.micro_batch}*{self.batch.seq_len}*"
                f"{world_size} = {per_micro}. Change --batch.tokens-per-step or --batch.micro-batch."
            )
        return self.batch.tokens_per_step // per_micro

    def validate(self, world_size: int = 1) -> None:
        """Raise one ValueError listing every inconsistent setting (and every missing input file)."""
        problems = [*self._size_problems(world_size), *self._interval_problems()]
        problems += self._input_problems()
        if problems:
            raise ValueError("Invalid training config: " + "; ".join(problems) + ".")

    def warnings(self) -> list[str]:
        """Settings that are legal but probably not meant, as sentences."""
        o = self.optim
        notes = []
        if o.warmup_steps > self.run.max_steps:
            notes.append(
                f"optim.warmup_steps={o.warmup_steps} exceeds run.max_steps={self.run.max_steps}: "
                f"the learning rate never reaches its peak optim.lr={o.lr}."
            )
        return notes

    def _size_problems(self, world_size: int) -> list[str]:
        problems = []
        o, b, r = self.optim, self.batch, self.run
        if b.seq_len > self.model.block_size:
            problems.append(
                f"batch.seq_len={b.seq_len} exceeds model.block_size={self.model.block_size}"
            )
        sizes = {
            "batch.seq_len": b.seq_len,
            "batch.micro_batch": b.micro_batch,
            "batch.tokens_per_step": b.tokens_per_step,
            "run.max_steps": r.max_steps,
        }
        bad = [f"{k}={v}" for k, v in sizes.items() if v < 1]
        if bad:
            problems.append(f"{', '.join(bad)} must be positive")
        else:  # the batch arithmetic divides by these
            try:
                self.grad_accum_steps(world_size)
            except ValueError as e:
                problems.append(str(e).rstrip("."))
            if self.eval.val_tokens < b.seq_len * world_size:
                problems.append(
                    f"eval.val_tokens={self.eval.val_tokens} must be at least batch.seq_len x "
                    f"world size = {b.seq_len * world_size} (one validation window per rank)"
                )
        if r.max_minutes is not None and r.max_minutes <= 0:
            problems.append(f"run.max_minutes={r.max_minutes} must be positive (or None: no limit)")
        if not 0 <= o.min_lr <= o.lr:
            problems.append(f"need 0 <= optim.min_lr ({o.min_lr}) <= optim.lr ({o.lr})")
        if not (0 <= o.beta1 < 1 and 0 <= o.beta2 < 1):
            problems.append(f"optim.beta1={o.beta1} and optim.beta2={o.beta2} must be in [0, 1)")
        negative = {"optim.weight_decay": o.weight_decay, "optim.grad_clip": o.grad_clip}
        problems += [f"{k}={v} must be >= 0" for k, v in negative.items() if v < 0]
        if not o.eps > 0:
            problems.append(f"optim.eps={o.eps} must be positive")
        if self.eval.sample_tokens < 1:  # the end of every run writes samples
            problems.append(f"eval.sample_tokens={self.eval.sample_tokens} must be >= 1")
        if o.warmup_steps < 0 or (o.decay_steps is not None and o.decay_steps < o.warmup_steps):
            problems.append("optim.warmup_steps must be >= 0 and <= optim.decay_steps")
        if r.parallel not in ("ddp", "fsdp"):
            problems.append(f"run.parallel={r.parallel!r} must be ddp or fsdp")
        if r.dtype not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"run.dtype={r.dtype!r} must be auto, fp32, bf16 or fp16")
        if self.checkpoint.keep_last < 1:
            problems.append("checkpoint.keep_last must be >= 1")
        if self.stability.max_bad_steps < 1:
            problems.append(f"stability.max_bad_steps={self.stability.max_bad_steps} must be >= 1")
        limit = self.eval.hellaswag_limit
        if limit is not None and limit < 1:
            problems.append(f"eval.hellaswag_limit={limit} must be positive (or None: all)")
        return problems

    def _interval_problems(self) -> list[str]:
        intervals = {
            "eval.interval": self.eval.interval,
            "eval.sample_interval": self.eval.sample_interval,
            "checkpoint.interval": self.checkpoint.interval,
            "log.interval": self.log.interval,
        }
        bad = [f"{k}={v}" for k, v in intervals.items() if v < 0]
        return [f"{', '.join(bad)} must be >= 0 (0: only at the end)"] if bad else []

    def _input_problems(self) -> list[str]:
        """Files the run will read: checked now, not after hours of training."""
        from gpt2repro.tokenizer import MIN_BPE_VOCAB_SIZE

        problems = []
        tok = self.data.tokenizer
        if tok.startswith("train:"):
            n = tok.removeprefix("train:")
            if not n.isdigit() or int(n) < MIN_BPE_VOCAB_SIZE:
                problems.append(
                    f"data.tokenizer={tok!r}: write train:N with N the vocabulary size, an "
                    f"integer >= {MIN_BPE_VOCAB_SIZE}, e.g. train:4096"
                )
        elif tok != "gpt2" and not (tok.endswith(".json") and Path(tok).is_file()):
            problems.append(
                f"data.tokenizer={tok!r}: use gpt2, train:N or an existing tokenizer .json file"
            )
        resume = self.checkpoint.resume
        if resume not in ("none", "auto"):
            meta = Path(resume) / "meta.json"  # checkpoint.META; config stays free of I/O code
            if not meta.is_file():
                problems.append(
                    f"checkpoint.resume={resume!r}: no checkpoint there (no {meta}); use none, "
                    f"auto or a checkpoint directory such as {self.run.out_dir}/checkpoints/step_N"
                )
        path = self.eval.hellaswag_path
        if self.eval.hellaswag and path is not None and not Path(path).expanduser().is_file():
            problems.append(
                f"eval.hellaswag_path={str(path)!r}: no such file; pass the path of "
                f"hellaswag_val.jsonl, or leave it unset to download it"
            )
        return problems
