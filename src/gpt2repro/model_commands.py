"""Arguments and entry points of `gpt2repro sample`, `export`, `tokenizer train` and
`tokenizer encode`: the commands on a model or a tokenizer that belong to no package.

Each `*Args` dataclass is parsed by tyro in `gpt2repro.cli` (field docstrings become
--help); each `run_*` function raises ValueError / FileNotFoundError for user mistakes
and prints its result. The library is imported where it runs: it imports torch, which
`--help` should not wait for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import tyro

if TYPE_CHECKING:
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


@dataclass
class ExportArgs:
    """Write a model as a Hugging Face directory (config.json + model.safetensors): GPT2LMHeadModel, or NanoChatForCausalLM for the modern options."""

    model: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="MODEL")]
    """Checkpoint directory, training run directory (its best checkpoint), Hugging Face directory, hub id or init:PRESET."""
    out_dir: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="OUT_DIR")]
    """Directory to create; transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR) loads it."""
    seed: int = 1337
    """Seed for init:PRESET models."""
    overwrite: Annotated[bool, tyro.conf.FlagCreatePairsOff] = False
    """Replace OUT_DIR if it already exists and is not empty."""


def run_export(args: ExportArgs) -> None:
    from gpt2repro.loading import load_source, resolve_source
    from gpt2repro.nanochat import stock_class
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
    cls = stock_class(loaded.model.config)
    print(f"Exported {model} to {path} (a {cls}: load with AutoModelForCausalLM.from_pretrained).")


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


def run_tokenizer_train(args: TokenizerTrainArgs) -> None:
    from gpt2repro.data.train_bpe import train_bpe

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


@dataclass
class TokenizerEncodeArgs:
    """Print the token ids of a text (handy for checking a tokenizer)."""

    text: Annotated[str, tyro.conf.Positional]
    """Text to encode."""
    tokenizer: str = "gpt2"
    """gpt2 or a tokenizer .json file."""
    allow_special: bool = False
    """Treat <|endoftext|> as the special token instead of plain text."""


def run_tokenizer_encode(args: TokenizerEncodeArgs) -> None:
    from gpt2repro.tokenizer import load_tokenizer

    print(load_tokenizer(args.tokenizer).encode(args.text, allow_special=args.allow_special))
