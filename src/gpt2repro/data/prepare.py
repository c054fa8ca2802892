"""`prepare_dataset`: documents -> tokens -> shards + manifest, in parallel, resumable.

The token stream of a split is `eot doc1 eot doc2 ...`: every document is preceded by
<|endoftext|>, so each one starts in the same context that `gpt2repro sample` starts
from. A document goes to validation when its source says so, or else when the hash of its
key falls below `val_fraction`; if a corpus ends without any validation document, its last
document becomes one, so even a two-document corpus has both splits (and a corpus of a
single .txt file is cut into a train and a val document, see `sources.files`). The
assignment depends only on the keys and their order, never on timing or the number of
workers. A corpus that still leaves a split empty is an error that names the option to
pass, and leaves no folder behind.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from tqdm import tqdm

from gpt2repro.data import manifest as mf
from gpt2repro.data.dataset_dir import (
    discard,
    exclusive,
    is_complete,
    refuse_foreign_files,
    remove_dataset,
)
from gpt2repro.data.shards import token_dtype
from gpt2repro.data.sources import (
    DATASETS,
    DEFAULT_VAL_FRACTION,
    Source,
    expand_paths,
    files,
    shakespeare,
)
from gpt2repro.data.workers import encode_stream
from gpt2repro.data.writer import DatasetWriter, TokenizerInfo
from gpt2repro.tokenizer import Tokenizer, load_tokenizer

# Sources that come with their own validation split.
OWN_SPLIT = ("tinyshakespeare", "tinystories")
# 100M tokens (200 MB as uint16) per shard, as in llm.c and nanochat's FineWeb shards.
DEFAULT_SHARD_TOKENS = 100_000_000


def default_workers() -> int:
    """All cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS and Windows have no affinity masks
        return os.cpu_count() or 1


def assign_split(key: str, val_fraction: float) -> str:
    """'val' for a `val_fraction` share of keys, chosen by a hash: stable across runs and machines."""
    h = int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")
    return "val" if h < val_fraction * 2**64 else "train"


def open_source(
    dataset: str,
    paths: Sequence[str] = (),
    *,
    text_field: str = "text",
    txt_separator: str | None = None,
    val_fraction: float | None = None,
) -> Source:
    """The document stream of `dataset`; online ones fail fast when offline."""
    if dataset == "shakespeare":
        return shakespeare()
    if dataset == "files":
        return files(paths, text_field, txt_separator, val_fraction)
    from gpt2repro.data import hub  # urllib and friends only for online datasets

    if dataset == "tinyshakespeare":
        return hub.tiny_shakespeare_source(Path(paths[0]) if paths else None)
    if dataset in hub.HUB_DATASETS:
        return hub.hub_source(dataset)
    raise ValueError(f"Unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}.")


def check_request(
    dataset: str,
    paths: Sequence[str],
    out_name: str | None,
    shard_tokens: int,
    val_fraction: float | None,
    workers: int | None,
    txt_separator: str | None = None,
) -> list[str]:
    """Every problem with a prepare request, as messages (empty when it is fine)."""
    problems = []
    if txt_separator == "":
        problems.append("--txt-separator must not be empty (leave it out: one document per file)")
    if dataset == "tinyshakespeare" and paths and not Path(paths[0]).is_file():
        problems.append(f"{paths[0]}: no such file (expected char-rnn's input.txt)")
    if dataset not in DATASETS:
        problems.append(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset == "files":
        if not paths:
            problems.append(
                "`files` needs input paths: .txt, .jsonl or .parquet files, folders or globs"
            )
        if not out_name:
            problems.append("`files` needs a dataset name: --name NAME")
    elif dataset == "tinyshakespeare" and len(paths) > 1:
        problems.append("tinyshakespeare takes at most one path, a local copy of input.txt")
    elif paths and dataset in DATASETS and dataset != "tinyshakespeare":
        problems.append(
            f"{dataset} takes no paths; for local files use `gpt2repro prepare files --name NAME PATHS...`"
        )
    if out_name is not None and (not out_name or "/" in out_name or out_name.startswith(".")):
        problems.append(f"--name {out_name!r} must be a plain folder name")
    if shard_tokens < 2:
        problems.append(f"shard_tokens={shard_tokens} must be at least 2")
    if val_fraction is not None:
        if dataset in OWN_SPLIT:
            problems.append(f"{dataset} has its own validation split; leave out --val-fraction")
        elif not 0 < val_fraction < 1:
            problems.append(f"val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    if workers is not None and workers < 1:
        problems.append(f"workers={workers} must be at least 1")
    return problems


def prepare_dataset(
    name: str,
    data_root: Path,
    tokenizer_spec: str = "gpt2",
    *,
    paths: Sequence[str] = (),
    out_name: str | None = None,
    text_field: str = "text",
    txt_separator: str | None = None,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    val_fraction: float | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Prepare dataset `name` under `data_root` and return its directory.

    A complete dataset prepared with the same settings is returned at once (no network, no
    tokenization); an interrupted one resumes; one prepared with other settings is an
    error unless `overwrite`. `out_name` names the output folder (required for `files`).
    """
    problems = check_request(
        name, paths, out_name, shard_tokens, val_fraction, workers, txt_separator
    )
    if problems:
        raise ValueError("Cannot prepare: " + "; ".join(problems) + ".")
    tok = load_tokenizer(tokenizer_spec)
    if name == "files":
        inputs = [str(p.resolve()) for p in expand_paths(paths)]
    else:
        inputs = [str(Path(p).resolve()) for p in paths]
    val_fraction = DEFAULT_VAL_FRACTION.get(name) if val_fraction is None else val_fraction
    settings = {
        "dataset": name,
        "inputs": inputs,
        "text_field": text_field,
        "txt_separator": txt_separator,
        "tokenizer": tok.identifier,
        "vocab_size": tok.vocab_size,
        "shard_tokens": shard_tokens,
        "val_fraction": val_fraction,
        "document_separator": "eot before every document",
    }
    out_dir = mf.dataset_dir(Path(data_root), out_name or name, tok.identifier)
    if not overwrite and is_complete(out_dir, settings):
        return out_dir
    # Opened before anything is created, so an offline source fails leaving no trace.
    source = _open_for(tokenizer_spec, name, paths, text_field, txt_separator, val_fraction)
    if overwrite or not (out_dir / mf.PROGRESS).is_file():  # a resume deletes nothing
        refuse_foreign_files(out_dir)
    existed = out_dir.exists()
    try:
        with exclusive(out_dir, progress):
            if overwrite:
                remove_dataset(out_dir)
            elif is_complete(out_dir, settings):  # another process finished it meanwhile
                return out_dir
            _write(source, out_dir, tok, settings, workers or default_workers(), progress)
    except Exception as e:
        # An empty split: the same inputs and settings would fail the same way. Any error
        # before the first progress checkpoint of a new folder: nothing there to resume.
        # Either way a leftover folder would only be clutter, or demand --overwrite.
        fresh = not existed and not (out_dir / mf.PROGRESS).is_file()
        if isinstance(e, EmptySplitError) or fresh:
            discard(out_dir, existed)
        raise
    return out_dir


def _open_for(
    tokenizer_spec: str,
    name: str,
    paths: Sequence[str],
    text_field: str,
    txt_separator: str | None,
    val_fraction: float | None,
) -> Source:
    """`open_source`, whose offline advice names the tokenizer to prepare local files with."""
    from gpt2repro.data import hub

    try:
        return open_source(
            name,
            paths,
            text_field=text_field,
            txt_separator=txt_separator,
            val_fraction=val_fraction,
        )
    except hub.SourceUnreachable as e:
        if tokenizer_spec == "gpt2":
            raise
        raise hub.SourceUnreachable(e.problem, hub.offline_hint(name, tokenizer_spec)) from None


class EmptySplitError(ValueError):
    """The whole source was read and one split got no document."""


class _Pending(NamedTuple):
    """A tokenized document waiting for its split."""

    number: int
    """position in the source stream"""
    forced_split: str | None
    key: str
    tokens: np.ndarray
    nbytes: int


def _write(
    source: Source,
    out_dir: Path,
    tok: Tokenizer,
    settings: dict[str, Any],
    workers: int,
    progress: bool,
) -> None:
    info = TokenizerInfo(tok.identifier, tok.spec, tok.vocab_size, tok.eot_id)
    dtype = token_dtype(tok.vocab_size)
    config = {"settings": settings, "source": source.description}
    writer = DatasetWriter(out_dir, config, info, settings["shard_tokens"], dtype)
    try:
        if not writer.complete:
            _tokenize(writer, source, tok.spec, settings["val_fraction"], workers, progress)
        splits = writer.finish()
    finally:
        writer.close()
    writer.publish(splits)


def _tokenize(
    writer: DatasetWriter,
    source: Source,
    tokenizer_spec: str,
    val_fraction: float | None,
    workers: int,
    progress: bool,
) -> None:
    """Stream the source (from the writer's resume point) through the workers into the writer."""
    index = writer.next_doc
    docs = itertools.islice(source.documents(), index, None)
    bar = tqdm(
        total=source.total_documents,
        initial=index,
        unit="doc",
        desc=f"prepare {writer.out_dir.name}",
        disable=not progress,
        dynamic_ncols=True,
    )
    t0, tokens = time.perf_counter(), 0
    # A document waits for the next one (or the end of the stream) to learn whether it is
    # the last: the last one goes to validation if nothing else did.
    pending: _Pending | None = None
    for metas, enc in encode_stream(docs, tokenizer_spec, writer.dtype, workers):
        ends = np.cumsum(enc.lengths)
        for j, doc in enumerate(metas):
            if pending is not None:
                _route(writer, pending, val_fraction, last=False)
            piece = enc.tokens[ends[j] - enc.lengths[j] : ends[j]]
            pending = _Pending(index, doc.split, doc.key, piece, int(enc.nbytes[j]))
            index += 1
        tokens += len(enc.tokens)
        bar.update(len(metas))
        rate = tokens / (time.perf_counter() - t0)
        bar.set_postfix_str(f"{rate / 1e6:.2f}M tok/s", refresh=False)
    if pending is not None:
        _route(writer, pending, val_fraction, last=True)
    bar.close()
    counts = {split: writer.states[split].documents for split in mf.SPLITS}
    for split, n in counts.items():
        if n == 0:
            raise EmptySplitError(
                f"The {split} split of {source.name} came out empty ({counts['train']} train "
                f"and {counts['val']} val documents). {_more_documents_hint(source, counts)}"
            )


def _more_documents_hint(source: Source, counts: dict[str, int]) -> str:
    """What to pass so that both splits get documents."""
    if sum(counts.values()) >= 2:
        return "Lower --val-fraction, or give it more documents."
    if not any(counts.values()):
        return "Its inputs hold no text (empty files, or empty --field values): check them."
    separator = source.description.get("txt_separator")
    txt = source.name == "files" and any(p.endswith(".txt") for p in source.description["paths"])
    if txt and separator is None:
        return (
            "Each .txt file is one document: cut them into documents with --txt-separator, "
            "e.g. `--txt-separator $'\\n\\n'` (bash) for blank lines, or give more files."
        )
    if separator is not None:
        return (
            f"--txt-separator {separator!r} left a single document: pass a separator that "
            "occurs in the text, or give more files."
        )
    return "Give it at least two documents."


def _route(writer: DatasetWriter, doc: _Pending, val_fraction: float | None, last: bool) -> None:
    split = writer.resumed_split(doc.number) or doc.forced_split
    if split is None:
        assert val_fraction is not None, "a source without splits needs a val_fraction"
        split = assign_split(doc.key, val_fraction)
        if last and writer.states["val"].documents == 0:
            split = "val"
    writer.add(doc.number, split, doc.tokens, doc.nbytes)
