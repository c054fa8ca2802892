"""Typed training configuration: nested dataclasses, each field with a default and a docstring.

`gpt2repro train --preset NAME --optim.lr 3e-4 ...` starts from a preset (presets/)
and overrides fields by their dotted names; tyro rejects unknown names and bad types.
`TrainConfig.validate()` collects every inconsistency into one error; every numeric field
has its allowed range in `ranges.RANGES`, so NaN, infinities and out-of-range values never reach a run.
"""

from __future__ import annotations

import typing
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro

from gpt2repro.model import GPTConfig
from gpt2repro.ranges import RANGES, Range


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
class InitConfig:
    """Where the weights start: a fresh initialisation from run.seed, or a trained model.

    Its own section, not a GPTConfig field, so the architecture stored in checkpoints stays
    architecture only; the command line still spells it `--model.init-from`.
    """

    source: Annotated[str | None, tyro.conf.arg(name="model.init-from", prefix_name=False)] = None
    """Fine-tune from this model (None: train from scratch): gpt2 ... gpt2-xl, an exported Hugging Face directory, a checkpoint directory or a training run's directory. The run takes its architecture and tokenizer; --model.block-size may only shrink, --model.dropout is free."""


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
    schedule: Literal["cosine", "wsd"] = "cosine"
    """cosine: warmup, then a half cosine to min_lr; wsd (warmup-stable-decay): warmup, constant, then linear to min_lr over the last decay_fraction of the run."""
    decay_fraction: float = 0.2
    """wsd only: share of the run spent decaying (the rest after warmup is constant)."""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw for every parameter; muon: torch.optim.Muon for the blocks' matrices, AdamW (lr, embed_lr, head_lr) for the rest."""
    muon_lr: float = 0.02
    """muon only: peak learning rate of the blocks' matrices (the schedule scales it like lr)."""
    muon_momentum: float = 0.95
    """muon only: Nesterov momentum, reached after muon_momentum_warmup_steps."""
    muon_momentum_start: float = 0.85
    """muon only: momentum at step 0, raised linearly to muon_momentum (modded-nanogpt)."""
    muon_momentum_warmup_steps: int = 0
    """muon only: steps over which the momentum rises from muon_momentum_start (0: constant)."""
    muon_weight_decay: float = 0.0
    """muon only: decoupled weight decay of the Muon matrices."""
    embed_lr: float | None = None
    """Peak AdamW learning rate of the embeddings (None: lr)."""
    head_lr: float | None = None
    """Peak AdamW learning rate of an untied output head (None: lr)."""


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


def _is_numeric(hint: Any) -> bool:
    """int, float or an Optional of them; bool is a flag, not a number."""
    return any(t in (int, float) for t in (typing.get_args(hint) or (hint,)))


def numeric_fields(cfg: TrainConfig) -> Iterator[tuple[str, Any]]:
    """(dotted name, value) of every int or float field of every section of `cfg`."""
    for section in fields(cfg):
        part = getattr(cfg, section.name)
        hints = typing.get_type_hints(type(part))
        for f in fields(part):
            if _is_numeric(hints[f.name]):
                yield f"{section.name}.{f.name}", getattr(part, f.name)


@dataclass
class TrainConfig:
    """Everything a training run needs; the presets package holds named instances."""

    model: GPTConfig = field(default_factory=GPTConfig)
    init: InitConfig = field(default_factory=InitConfig)
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
        problems, bad = self._range_problems()
        problems += self._relation_problems(world_size, bad)
        problems += self._choice_problems() + self._input_problems()
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

    def _range_problems(self) -> tuple[list[str], set[str]]:
        """Numbers outside RANGES (NaN and infinities included), and the names of those fields.
        Fields that break the same rule share one sentence."""
        by_rule: dict[str, list[str]] = {}
        bad = set()
        for name, value in numeric_fields(self):
            allowed = RANGES.get(name, Range())  # a field missing there must still be finite
            if value is None or allowed.holds(value):
                continue
            by_rule.setdefault(allowed.rule(value), []).append(f"{name}={value}")
            bad.add(name)
        return [f"{', '.join(names)} {rule}" for rule, names in by_rule.items()], bad

    def _relation_problems(self, world_size: int, bad: set[str]) -> list[str]:
        """Rules between fields, checked once the fields themselves are in range."""
        m, o, b = self.model, self.optim, self.batch
        problems = []

        def ok(*names: str) -> bool:
            return not bad.intersection(names)

        if ok("batch.seq_len", "model.block_size") and b.seq_len > m.block_size:
            problems.append(f"batch.seq_len={b.seq_len} exceeds model.block_size={m.block_size}")
        if ok("batch.seq_len", "batch.micro_batch", "batch.tokens_per_step"):
            try:  # the batch arithmetic divides by these
                self.grad_accum_steps(world_size)
            except ValueError as e:
                problems.append(str(e).rstrip("."))
            if ok("eval.val_tokens") and self.eval.val_tokens < b.seq_len * world_size:
                problems.append(
                    f"eval.val_tokens={self.eval.val_tokens} must be at least batch.seq_len x "
                    f"world size = {b.seq_len * world_size} (one validation window per rank)"
                )
        if ok("optim.min_lr", "optim.lr") and o.min_lr > o.lr:
            problems.append(f"need 0 <= optim.min_lr ({o.min_lr}) <= optim.lr ({o.lr})")
        decay = o.decay_steps
        if decay is not None and ok("optim.decay_steps") and decay < o.warmup_steps:
            problems.append(
                f"optim.decay_steps={decay} must be >= optim.warmup_steps={o.warmup_steps}"
            )
        if ok("model.n_embd", "model.n_head") and m.n_embd % m.n_head != 0:
            problems.append(f"model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}")
        return problems

    def _choice_problems(self) -> list[str]:
        r = self.run
        problems = []
        if r.parallel not in ("ddp", "fsdp"):
            problems.append(f"run.parallel={r.parallel!r} must be ddp or fsdp")
        if r.dtype not in ("auto", "fp32", "bf16", "fp16"):
            problems.append(f"run.dtype={r.dtype!r} must be auto, fp32, bf16 or fp16")
        o = self.optim
        if o.schedule not in ("cosine", "wsd"):
            problems.append(f"optim.schedule={o.schedule!r} must be cosine or wsd")
        if o.optimizer not in ("adamw", "muon"):
            problems.append(f"optim.optimizer={o.optimizer!r} must be adamw or muon")
        elif o.optimizer == "muon" and r.parallel == "fsdp":
            # Muon orthogonalises whole matrices; FSDP hands each rank a shard of each one.
            problems.append(
                "optim.optimizer=muon cannot run under run.parallel=fsdp (Muon needs whole "
                "matrices, FSDP shards them): use --run.parallel ddp, or optim.optimizer=adamw"
            )
        elif o.optimizer == "muon" and r.dtype == "fp16":
            problems.append(
                "optim.optimizer=muon is not supported with run.dtype=fp16 (its loss scaler "
                "steps one optimizer): use bf16 or fp32"
            )
        return problems

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
        return problems + self._out_dir_problems()

    def _out_dir_problems(self) -> list[str]:
        """A file where the run directory (or a folder above it) must go: caught now, as one
        sentence, not as the operating system's error when the run starts to write."""
        out = Path(self.run.out_dir).expanduser()
        existing = next((p for p in (out, *out.parents) if p.exists()), None)
        if existing is None or existing.is_dir():
            return []
        where = "" if existing == out else f" (inside {existing})"
        return [
            f"run.out_dir={str(self.run.out_dir)!r}{where}: {existing} is a file, not a "
            f"directory; choose a directory path for --run.out-dir, or remove the file"
        ]
