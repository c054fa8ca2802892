"""The `gpt2repro` command: subcommands mapped to plain library functions.

This is the only module that exits. Each subcommand's arguments are a typed dataclass
parsed by tyro (field docstrings become --help); mistakes a user can make surface as
ValueError / FileNotFoundError from the library and are printed here as one paragraph,
with a non-zero exit and no traceback.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import tyro

from gpt2repro.data.commands import (
    BenchPrepareArgs,
    PrepareArgs,
    VerifyArgs,
    run_bench_prepare,
    run_prepare,
    run_verify,
)
from gpt2repro.evaluation.commands import CardArgs, EvalArgs, PlotArgs, run_card, run_eval, run_plot

if TYPE_CHECKING:  # imported where used: torch slows down every other command's --help
    from gpt2repro.sampling import SamplingConfig


@dataclass
class SampleArgs:
    """Generate text from a checkpoint, an exported or hub GPT-2, or a fresh model."""

    model: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="[MODEL]")] = "init:tiny"
    """Checkpoint directory, training run directory (its best checkpoint), Hugging Face directory, hub id (gpt2, gpt2-medium, ...) or init:PRESET."""
    prompt: str = ""
    """Text to continue (empty: start from the end-of-text token)."""
    prompt_file: Path | None = None
    """Read the prompt from this file (instead of --prompt, not with it)."""
    num_samples: int = 1
    """How many independent samples to draw."""
    max_new_tokens: int = 100
    """Tokens to generate per sample."""
    temperature: float = 0.8
    """Softmax temperature; 0 = greedy."""
    top_k: int | None = 200
    """Keep only the k most likely tokens (None: off)."""
    top_p: float | None = None
    """Nucleus sampling threshold in (0, 1] (None: off)."""
    seed: int = 1337
    """Random seed; the same seed gives the same text."""
    tokenizer: str | None = None
    """Override the model's tokenizer: gpt2 or a tokenizer .json file."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    no_cache: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """Recompute the whole context each step instead of using the KV cache (slow; for checking)."""


@dataclass
class ExportArgs:
    """Write a model as a Hugging Face GPT-2 directory (config.json + model.safetensors)."""

    model: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="MODEL")]
    """Checkpoint directory, training run directory (its best checkpoint), Hugging Face directory, hub id or init:PRESET."""
    out_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")]
    """Directory to create; transformers.GPT2LMHeadModel.from_pretrained(OUT_DIR) loads it."""
    seed: int = 1337
    """Seed for init:PRESET models."""
    overwrite: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """Replace OUT_DIR if it already exists and is not empty."""


@dataclass
class TokenizerTrainArgs:
    """Train a byte-level BPE tokenizer on text files and save it as one .json file."""

    files: Annotated[
        tuple[Path, ...],
        tyro.conf.Positional,
        tyro.conf.arg(metavar="FILE [FILE ...]", help_behavior_hint="(required)"),
    ]
    """Text to learn merges from, as `prepare files` reads it: .txt/.jsonl/.parquet files, folders, globs."""
    vocab_size: int = 50257
    """Size of the vocabulary, including <|endoftext|>."""
    out: Path = Path("tokenizer.json")
    """Where to write the tokenizer."""
    field: str = "text"
    """Text field of .jsonl records / text column of .parquet files."""
    overwrite: bool = False
    """Replace an existing --out file (datasets prepared with it then no longer match it)."""


@dataclass
class TokenizerEncodeArgs:
    """Print the token ids of a text (handy for checking a tokenizer)."""

    text: Annotated[str, tyro.conf.Positional]
    """Text to encode."""
    tokenizer: str = "gpt2"
    """gpt2 or a tokenizer .json file."""
    allow_special: bool = False
    """Treat <|endoftext|> as the special token instead of plain text."""


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


def pop_option(argv: list[str], name: str, default: str) -> tuple[str, list[str]]:
    """Remove `--name VALUE` or `--name=VALUE` from argv; returns (value, rest)."""
    rest, value, i = [], default, 0
    while i < len(argv):
        if argv[i] == name and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif argv[i].startswith(name + "="):
            value, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return value, rest


def run_train(argv: list[str]) -> None:
    """Train GPT-2 from a preset with typed overrides (--dry-run: plan only)."""
    from gpt2repro.config import TrainConfig
    from gpt2repro.distributed import dist_info_from_env
    from gpt2repro.presets import DEFAULT_TRAIN_PRESET, TRAIN_PRESETS, train_preset

    preset, argv = pop_option(argv, "--preset", DEFAULT_TRAIN_PRESET)
    description = (
        "Train GPT-2. Starts from --preset and overrides fields by name, e.g. --optim.lr 3e-4. "
        "--dry-run prints the resolved config, time and peak-memory estimates and the largest "
        "micro-batch that fits, without training."
    )
    # Built here, not at module level: TrainConfig imports torch, which `--help` of the other
    # commands should not wait for. --preset was read above (it picks the defaults); it is
    # declared again only so that --help lists it.
    preset_help = f"Preset to start from: {', '.join(TRAIN_PRESETS)}."
    dry_run_help = "Print the plan (config, time, memory, largest micro-batch) and exit."
    train_args = make_dataclass(
        "TrainArgs",
        [
            ("config", Annotated[TrainConfig, tyro.conf.arg(name="")]),
            ("preset", Annotated[str, tyro.conf.arg(help=preset_help)], field(default=preset)),
            (
                "dry_run",
                Annotated[bool, tyro.conf.FlagCreatePairsOff, tyro.conf.arg(help=dry_run_help)],
                field(default=False),
            ),
        ],
    )
    parsed = tyro.cli(
        train_args,
        default=train_args(train_preset(preset), preset, False),
        args=argv,
        prog="gpt2repro train",
        description=description,
    )
    cfg, dry_run = parsed.config, parsed.dry_run
    if dry_run:
        from gpt2repro.training.plan import dry_run_report

        report = dry_run_report(cfg)
        if dist_info_from_env().is_main:  # under torchrun, one report, not one per rank
            print(report)
        return
    from gpt2repro.training.loop import train

    result = train(cfg)
    if dist_info_from_env().is_main:
        _print_summary(result)
    if result.stopped_by == "unstable":
        raise SystemExit(3)
    if result.stopped_by == "signal":
        # The shell's convention, 128 + signal: 130 for Ctrl-C, 143 for SIGTERM. A rank that
        # stopped because another rank was signalled reports SIGTERM, as a scheduler would send.
        raise SystemExit(128 + (result.signal or signal.SIGTERM))


def _print_summary(result: Any) -> None:
    print(f"run directory: {result.run_dir}")
    if result.final_val:
        print(
            f"final val loss {result.final_val['loss']:.4f}, bits per byte {result.final_val['bpb']:.4f}"
        )
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    for name in ("samples.txt", "loss.png", "metrics.jsonl"):
        if (result.run_dir / name).exists():
            print(f"{name}: {result.run_dir / name}")


@dataclass
class BenchShakespeareArgs:
    """The default run against nanoGPT's character-level CPU recipe in the same wall time."""

    out_root: Path = Path("runs_out/bench_shakespeare")
    """Where both runs write their run directories."""
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_shakespeare(args: BenchShakespeareArgs) -> None:
    from gpt2repro.bench import bench_shakespeare, report

    report(bench_shakespeare(args.out_root), args.out)


@dataclass
class BenchPeakArgs:
    """This machine's matmul FLOP/s per dtype and memory-copy bandwidth."""

    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    out: Path | None = None
    """Also write the result as JSON here."""


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
    from gpt2repro.bench import report
    from gpt2repro.bench_loss import bench_loss
    from gpt2repro.parallelize import resolve_dtype
    from gpt2repro.runtime import resolve_device

    device = resolve_device(args.device)
    tokens = args.tokens or (16 if device.type == "cuda" else 4) * 1024
    dtype = resolve_dtype(args.dtype, device)
    report(bench_loss(tokens, args.n_embd, args.vocab, dtype, str(device)), args.out)


def run_bench_peak(args: BenchPeakArgs) -> None:
    from gpt2repro.bench import bench_peak, report

    report(bench_peak(args.device), args.out)


def run_bench_train(args: BenchTrainArgs) -> None:
    from gpt2repro.bench import report
    from gpt2repro.bench_train import bench_train

    result = bench_train(list(args.shapes), args.steps, args.device, args.compile, args.min_seconds)
    report(result, args.out)


def run_sample(args: SampleArgs) -> None:
    import torch

    from gpt2repro.loading import load_source
    from gpt2repro.runtime import resolve_device, seed_everything
    from gpt2repro.sampling import generate

    cfg = _sample_settings(args)
    text = _prompt_text(args)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    loaded = load_source(args.model, device, args.tokenizer)
    tok = loaded.tokenizer
    ids = tok.encode(text) if text else [tok.eot_id]
    prompt = torch.tensor([ids] * args.num_samples, dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    out = generate(loaded.model, prompt, cfg, generator=gen, use_cache=not args.no_cache)
    for i, row in enumerate(out.tolist()):
        new = row[len(ids) :]
        if tok.eot_id in new:
            new = new[: new.index(tok.eot_id)]
        print(f"--- sample {i + 1}/{args.num_samples} ---")
        print(text + tok.decode(new))


SEED_LIMIT = 2**32  # NumPy's seeds are below 2**32 (torch takes more)


def _sample_settings(args: SampleArgs) -> SamplingConfig:
    """The sampling settings, once every argument is known good (all problems in one error)."""
    from gpt2repro.sampling import SamplingConfig, sampling_problems

    problems = sampling_problems(
        args.max_new_tokens, args.temperature, args.top_k, args.top_p, flags=True
    )
    if args.num_samples < 1:
        problems.append(f"--num-samples {args.num_samples} must be >= 1")
    if not 0 <= args.seed < SEED_LIMIT:
        problems.append(f"--seed {args.seed} must be in [0, {SEED_LIMIT})")
    if args.prompt and args.prompt_file is not None:
        problems.append("--prompt and --prompt-file both give a prompt: pass only one of them")
    if problems:
        raise ValueError("Cannot sample: " + "; ".join(problems) + ".")
    return SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p)


def _prompt_text(args: SampleArgs) -> str:
    """--prompt, or the text of --prompt-file."""
    if args.prompt_file is None:
        return args.prompt
    if not args.prompt_file.is_file():
        raise FileNotFoundError(f"--prompt-file {args.prompt_file}: no such file.")
    try:
        return args.prompt_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"--prompt-file {args.prompt_file}: not UTF-8 text (byte {e.start}). Save it as UTF-8."
        ) from None


def run_export(args: ExportArgs) -> None:
    from gpt2repro.loading import load_source, resolve_source
    from gpt2repro.pretrained import check_export_dir, export_hf
    from gpt2repro.runtime import seed_everything

    check_export_dir(args.out_dir, args.overwrite, flag="--overwrite")  # before a slow load
    seed_everything(args.seed)
    model = resolve_source(args.model)
    loaded = load_source(model)
    spec = loaded.tokenizer.spec
    local = Path(model)
    source = str(local.resolve()) if local.exists() else model
    path = export_hf(
        loaded.model, args.out_dir, tokenizer_spec=spec, overwrite=args.overwrite, source=source
    )
    print(f"Exported {model} to {path} (load with GPT2LMHeadModel.from_pretrained).")


def run_tokenizer_train(args: TokenizerTrainArgs) -> None:
    from gpt2repro.tokenizer import train_bpe

    if args.out.is_dir():
        raise ValueError(
            f"--out {args.out} is a directory: --out must be a .json file path, not a "
            f"directory (e.g. --out {args.out / 'tokenizer.json'})."
        )
    if args.out.suffix != ".json":
        raise ValueError(
            f"--out {args.out}: name the tokenizer file *.json (it is Hugging Face's "
            f"tokenizer.json format, and --tokenizer / --data.tokenizer look for .json)."
        )
    if args.out.exists() and not args.overwrite:
        raise FileExistsError(
            f"{args.out} exists. Datasets and runs may use it: pass another --out, or "
            "--overwrite to replace it."
        )
    tok = train_bpe(list(args.files), args.vocab_size, args.out, text_field=args.field)
    print(f"Wrote {args.out} ({tok.vocab_size} tokens, identifier {tok.identifier}).")
    if tok.vocab_size < args.vocab_size:
        print(
            f"note: the text supports only {tok.vocab_size} of the {args.vocab_size} tokens "
            "asked for (no pair left that occurs twice); train on more text for a larger "
            "vocabulary."
        )


def run_tokenizer_encode(args: TokenizerEncodeArgs) -> None:
    from gpt2repro.tokenizer import load_tokenizer

    print(load_tokenizer(args.tokenizer).encode(args.text, allow_special=args.allow_special))


def run_bench_sample(args: BenchSampleArgs) -> None:
    from gpt2repro.bench import bench_sample, report

    report(bench_sample(args.model, args.new_tokens, args.prompt_tokens, args.device), args.out)


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
    from gpt2repro.bench import report
    from gpt2repro.data.bench import bench_loader, parse_shape

    shapes = [parse_shape(s) for s in args.shapes]
    result = bench_loader(
        args.data_dir, args.split, shapes, args.prefetch, args.tokens, args.rounds,
        args.synthetic_tokens, args.seed,
    )  # fmt: skip
    report(result, args.out)


@dataclass
class BenchEvalArgs:
    """HellaSwag examples/s batched (as `eval` runs it) against one example per forward pass."""

    model: str = "init:mini"
    """Model source, as for `gpt2repro sample` (init:gpt2_124m for the 124M shape)."""
    examples: int = 24
    """Synthetic examples in the hellaswag_val.jsonl schema to score per measurement."""
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
    out: Path | None = None
    """Also write the result as JSON here."""


def run_bench_eval(args: BenchEvalArgs) -> None:
    from gpt2repro.bench import report
    from gpt2repro.evaluation.bench import bench_eval

    result = bench_eval(
        args.model, args.examples, args.batch_size, args.rounds, args.device, args.dtype,
        args.seed,
    )  # fmt: skip
    report(result, args.out)


Command = tuple[type, Callable[..., object]]
COMMANDS: dict[str, Command] = {
    "prepare": (PrepareArgs, run_prepare),
    "data verify": (VerifyArgs, run_verify),
    "eval": (EvalArgs, run_eval),
    "plot": (PlotArgs, run_plot),
    "card": (CardArgs, run_card),
    "sample": (SampleArgs, run_sample),
    "export": (ExportArgs, run_export),
    "tokenizer train": (TokenizerTrainArgs, run_tokenizer_train),
    "tokenizer encode": (TokenizerEncodeArgs, run_tokenizer_encode),
    "bench peak": (BenchPeakArgs, run_bench_peak),
    "bench train": (BenchTrainArgs, run_bench_train),
    "bench loss": (BenchLossArgs, run_bench_loss),
    "bench sample": (BenchSampleArgs, run_bench_sample),
    "bench prepare": (BenchPrepareArgs, run_bench_prepare),
    "bench loader": (BenchLoaderArgs, run_bench_loader),
    "bench eval": (BenchEvalArgs, run_bench_eval),
    "bench shakespeare": (BenchShakespeareArgs, run_bench_shakespeare),
}


def usage(group: str | None = None) -> str:
    """The list of commands, or only those of `group` (e.g. "bench")."""
    head = f"gpt2repro {group} COMMAND" if group else "gpt2repro COMMAND"
    lines = [f"usage: {head} [--help] [ARGS...]", "", "commands:"]
    if group is None:
        lines.append(f"  {'train':<18} {run_train.__doc__ or ''}")
    for name, (args_type, _) in COMMANDS.items():
        if group is None or name.split()[0] == group:
            doc = (args_type.__doc__ or "").strip().splitlines()[0]
            lines.append(f"  {name:<18} {doc}")
    return "\n".join(lines)


GROUPS = {name.split()[0] for name in COMMANDS if " " in name}


def _find_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Longest command name that prefixes argv, and the remaining arguments."""
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in COMMANDS:
            return name, list(argv[n:])
    given = " ".join(argv[:2]) if argv else ""
    group = argv[0] if argv and argv[0] in GROUPS else None
    raise ValueError(f"Unknown command {given!r}.\n\n{usage(group)}")


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script; `argv` defaults to sys.argv[1:]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] in GROUPS and argv[1:2] in ([], ["-h"], ["--help"]):  # `gpt2repro bench`
        print(usage(argv[0]))
        return
    try:
        if argv[0] == "train":
            run_train(argv[1:])
            return
        name, rest = _find_command(argv)
        args_type, run = COMMANDS[name]
        args: object = tyro.cli(args_type, args=rest, prog=f"gpt2repro {name}")
        run(args)
    except (
        ValueError,
        # The machine's side (a missing or existing file, a full disk, no network, a dead
        # worker): each message names the file or what to do.
        OSError,
    ) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("Interrupted.", code=130)
