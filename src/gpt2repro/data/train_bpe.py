"""Training a byte-level BPE on files read as `gpt2repro prepare files` reads them (the
tokenizer itself, and training from texts, are tokenizer.py's)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from gpt2repro.data.sources import files as file_source
from gpt2repro.tokenizer import EOT, MIN_BPE_VOCAB_SIZE, ByteBPETokenizer, train_bpe_from_texts


def train_bpe(
    files: Sequence[Path | str],
    vocab_size: int,
    out_path: Path,
    *,
    text_field: str = "text",
    min_frequency: int = 2,
    show_progress: bool = True,
) -> ByteBPETokenizer:
    """Train a byte-level BPE on `files`, save it to `out_path` (JSON), load it back.

    `files` are read as `gpt2repro prepare files` reads them: .txt, .jsonl and .parquet
    files (`text_field` of each record), folders (searched recursively) or globs.
    """
    problems: list[str] = []
    error: type[Exception] = ValueError
    if not files:
        problems.append("no training files given; pass at least one UTF-8 text file or folder")
    else:
        try:
            source = file_source([str(f) for f in files], text_field=text_field)
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e).rstrip("."))
            error = type(e)
    if vocab_size < MIN_BPE_VOCAB_SIZE:
        problems.append(
            f"vocab_size={vocab_size} is too small: 256 byte tokens + {EOT} leave no room "
            f"for merges; use at least {MIN_BPE_VOCAB_SIZE}"
        )
    if problems:
        raise error("Cannot train BPE tokenizer: " + "; ".join(problems) + ".")
    texts = (doc.text for doc in source.documents())
    return train_bpe_from_texts(
        texts, vocab_size, out_path, min_frequency=min_frequency, show_progress=show_progress
    )
