"""Arguments and entry points of `gpt2repro bench peak / train / loss / sample / prepare /
loader / eval / shakespeare`.

Each `Bench*Args` dataclass is parsed by tyro in `gpt2repro.cli` (field docstrings become
--help); each `run_bench_*` function runs one benchmark, prints its result and optionally
writes it as JSON. The benchmarks are imported where they run: they import torch, which
`--help` should not wait for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro


@dataclass
class BenchPeakArgs:
    """This machine's matmul FLOP/s per dtype and memory-copy bandwidth."""

    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_peak(args: BenchPeakArgs) -> None:
    from gpt2repro.bench.common import report
    from gpt2repro.bench.peak import bench_peak

    report(bench_peak(args.device), args.out)


@dataclass
class BenchTrainArgs:
    """Training-step throughput, MFU, memory and spread per precision and compile setting."""

    shapes: tuple[str, ...] = ("124m", "shakespeare_cpu")
    """Model shapes to time: 124m (T=1024) and/or shakespeare_cpu."""
    steps: int = 5
    """Timed steps per variant (after warm-up), at least; the median is reported."""
    min_seconds: float = 60.0
    """Keep taking side-by-side steps of each pairing until this many seconds have passed."""
    compile: bool = True
    """Also time torch.compile variants."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_train(args: BenchTrainArgs) -> None:
    from gpt2repro.bench.common import report
    from gpt2repro.bench.train import bench_train

    result = bench_train(list(args.shapes), args.steps, args.device, args.compile, args.min_seconds)
    report(result, args.out)


@dataclass
class BenchLossArgs:
    """Chunked vs naive head + cross-entropy: peak memory, time and agreement at one micro-batch."""

    tokens: int = 0
    """Tokens in the micro-batch (0: 4 x 1024 on CPU, 16 x 1024 on CUDA, the 124M preset's)."""
    n_embd: int = 768
    """Width of the hidden states (768 for the 124M)."""
    vocab: int = 50257
    """Vocabulary size (padded to a multiple of 64 as in the model)."""
    dtype: str = "auto"
    """fp32, bf16 or fp16; auto as in training."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_loss(args: BenchLossArgs) -> None:
    from gpt2repro.bench.common import report
    from gpt2repro.bench.loss import bench_loss
    from gpt2repro.parallelize import resolve_dtype
    from gpt2repro.runtime import resolve_device

    device = resolve_device(args.device)
    tokens = args.tokens or (16 if device.type == "cuda" else 4) * 1024
    dtype = resolve_dtype(args.dtype, device)
    report(bench_loss(tokens, args.n_embd, args.vocab, dtype, str(device)), args.out)


@dataclass
class BenchSampleArgs:
    """Tokens/s of generation with and without the KV cache, as a ratio."""

    model: str = "init:gpt2_124m"
    """Model source, as for `gpt2repro sample`."""
    new_tokens: int = 512
    """Tokens generated per measurement."""
    prompt_tokens: int = 16
    """Length of the random prompt."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_sample(args: BenchSampleArgs) -> None:
    from gpt2repro.bench.common import report
    from gpt2repro.bench.sample import bench_sample

    report(bench_sample(args.model, args.new_tokens, args.prompt_tokens, args.device), args.out)


@dataclass
class BenchPrepareArgs:
    """Tokens/s of `prepare` with 1 and 2 workers against tiktoken's batch encoder on one core."""

    repeat: int = 12
    """Copies of the Shakespeare corpus (5 MB, 1.6M tokens each) to tokenize."""
    workers: tuple[int, ...] = (1, 2)
    """Worker counts to measure."""
    rounds: int = 5
    """Interleaved rounds; ratios are the median of the rounds' ratios."""
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_prepare(args: BenchPrepareArgs) -> None:
    from gpt2repro.bench.common import report
    from gpt2repro.bench.prepare import bench_prepare

    report(bench_prepare(args.repeat, args.workers, args.rounds), args.out)


@dataclass
class BenchLoaderArgs:
    """Tokens/s of TokenLoader (with and without prefetch) against raw reading of the same windows."""

    data_dir: Path | None = None
    """Prepared dataset to read (default: a temporary one of random tokens, no network needed)."""
    split: str = "train"
    """Split of --data-dir to read."""
    shapes: tuple[str, ...] = ("16x1024", "32x128")
    """Micro-batch x sequence length to time: the 124M preset's on one GPU, and shakespeare_cpu's."""
    prefetch: tuple[int, ...] = (0, 2)
    """Loader prefetch settings to time (0: no prefetch thread)."""
    tokens: int = 1 << 24
    """Tokens read per measurement (each shape, side and round)."""
    rounds: int = 5
    """Interleaved rounds; ratios are the median of the rounds' ratios."""
    synthetic_tokens: int = 1 << 25
    """Size of the temporary dataset when no --data-dir is given."""
    seed: int = 0
    """Seed of the loader's order (and of the temporary dataset's tokens)."""
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_loader(args: BenchLoaderArgs) -> None:
    from gpt2repro.bench.common import report
    from gpt2repro.bench.loader import bench_loader, parse_shape

    shapes = [parse_shape(s) for s in args.shapes]
    result = bench_loader(
        args.data_dir, args.split, shapes, args.prefetch, args.tokens, args.rounds,
        args.synthetic_tokens, args.seed,
    )  # fmt: skip
    report(result, args.out)


@dataclass
class BenchEvalArgs:
    """HellaSwag and CORE examples/s batched (as `eval` runs them) against one example per forward pass."""

    model: str = "init:mini"
    """Model source, as for `gpt2repro sample` (init:gpt2_124m for the 124M shape)."""
    examples: int = 24
    """Synthetic examples in the hellaswag_val.jsonl schema to score per measurement (and, for CORE, of each of its three task types)."""
    batch_size: int = 8
    """Examples per forward pass on the batched side (4 rows each), as `eval --batch-size`."""
    rounds: int = 2
    """Interleaved rounds; the speedup is the median of the rounds' ratios."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: str = "auto"
    """auto (bf16 on capable hardware, else fp32), fp32, bf16 or fp16."""
    seed: int = 0
    """Seed of the model's initialisation and of the synthetic examples."""
    core: Annotated[bool, tyro.conf.FlagCreatePairsOff] = True
    """Time CORE scoring too, on synthetic 3-shot tasks (--no-core: HellaSwag only)."""
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_eval(args: BenchEvalArgs) -> None:
    from gpt2repro.bench.common import report
    from gpt2repro.bench.eval import bench_eval

    result = bench_eval(
        args.model, args.examples, args.batch_size, args.rounds, args.device, args.dtype,
        args.seed, core=args.core,
    )  # fmt: skip
    report(result, args.out)


@dataclass
class BenchShakespeareArgs:
    """`shakespeare_cpu` against nanoGPT's character-level CPU recipe in the same wall time."""

    out_root: Path = Path("runs_out/bench_shakespeare")
    """Where both runs write their run directories."""
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_shakespeare(args: BenchShakespeareArgs) -> None:
    from gpt2repro.bench.common import report
    from gpt2repro.bench.shakespeare import bench_shakespeare

    report(bench_shakespeare(args.out_root), args.out)


@dataclass
class BenchRecipesArgs:
    """The classic recipe against the modern one at equal training time, several seeds each."""

    out_root: Path = Path("runs_out/bench_recipes")
    """Where every run writes its run directory."""
    seeds: int = 3
    """Seeds per recipe."""
    ablation: Annotated[bool, tyro.conf.FlagCreatePairsOff] = True
    """Also add the modern pieces one at a time to the classic recipe, at seed 0."""
    out: Path | None = None
    """Also write the result as JSON here, and the figure beside it (same name, .png)."""


def run_bench_recipes(args: BenchRecipesArgs) -> None:
    from gpt2repro.bench.common import report
    from gpt2repro.bench.recipes import bench_recipes, plot_recipes

    if args.seeds < 1:
        raise ValueError(f"--seeds {args.seeds}: pass at least 1 (3 or more to report a spread).")
    result = bench_recipes(args.out_root, seeds=args.seeds, ablation=args.ablation)
    figure = (args.out or args.out_root / "recipes.json").with_suffix(".png")
    result["figure"] = str(plot_recipes(result, figure))
    report(result, args.out)
