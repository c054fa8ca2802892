"""Check a prepared dataset's shards against their headers and its manifest.

`verify_dataset` (behind `gpt2repro data verify` and `prepare --verify`) reads everything:
each shard's header fields (all have a defined value, see `data.shards`), its exact file
size, that its tokenizer, vocabulary, end-of-text id, dtype, count and CRC-32 are the
manifest's, the CRC-32 of its tokens, that every token is below the vocabulary size; per
split, that the shards add up to the manifest's token count, hold one <|endoftext|> per
document and spell the manifest's UTF-8 byte count; and that no unlisted shard lies next
to them. Every problem is reported at once, each naming its file, followed by the fix.

`open_split` is the cheap part (256 header bytes per shard, `header_problems`) that the
loader repeats whenever it opens a split. `check_split_counts` is what bits per byte relies
on: the split's token and byte counts, checked once per process before `evaluation.val`
divides by them.

Bytes are recounted from the tokens: with a byte-level BPE every id stands for a fixed
byte string, so a split's UTF-8 bytes are the sum of its tokens' byte lengths, the
end-of-text separators excluded (prepare counts documents without separators, and a
document's literal "<|endoftext|>" text is ordinary tokens). This matches `prepare`'s
count exactly, also for lone surrogates: it tokenizes the text with them replaced by
U+FFFD and counts that text's bytes (`data.workers._utf8_size`).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpt2repro.data.manifest import MANIFEST, fix_hint, read_manifest, redo_hint, split_shards
from gpt2repro.data.shards import ShardFormatError, ShardHeader, read_header, read_tokens

if TYPE_CHECKING:
    from gpt2repro.tokenizer import Tokenizer

# Tokens per block when scanning a shard: 32 MB of uint16, whatever the shard size.
_BLOCK = 1 << 24


@dataclass
class Scan:
    """What a pass over a shard's tokens found."""

    top: int
    """largest token id (-1 for an empty shard)"""
    eots: int
    """end-of-text tokens: one per document"""
    nbytes: int | None
    """UTF-8 bytes the non-eot tokens spell (None: no byte lengths given, or an id too large)"""
    crc: int | None
    """zlib CRC-32 of the token bytes (None: not asked for)"""


def _scan(tokens: np.ndarray, eot_id: int, lengths: np.ndarray | None, crc: bool) -> Scan:
    """Scan a shard block by block, so memory stays flat however large it is."""
    top, eots, nbytes, checksum = -1, 0, 0, 0
    for start in range(0, len(tokens), _BLOCK):
        block = np.ascontiguousarray(tokens[start : start + _BLOCK])  # one copy per block
        top = max(top, int(block.max()))
        eots += int(np.count_nonzero(block == eot_id))
        if lengths is not None and top < len(lengths):
            nbytes += int(lengths[block].sum(dtype=np.int64))
        if crc:
            checksum = zlib.crc32(block.data, checksum)
    counted = lengths is not None and top < len(lengths)
    return Scan(top, eots, nbytes if counted else None, checksum if crc else None)


_LENGTHS: dict[str, np.ndarray] = {}


def token_byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """UTF-8 bytes of each id's text (int32, one entry per id); 0 for <|endoftext|>."""
    if tokenizer.identifier not in _LENGTHS:
        from gpt2repro.tokenizer import ByteBPETokenizer, GPT2Tokenizer

        if isinstance(tokenizer, GPT2Tokenizer):
            enc = tokenizer.encoding
            sizes = [len(enc.decode_single_token_bytes(i)) for i in range(tokenizer.vocab_size)]
        elif isinstance(tokenizer, ByteBPETokenizer):
            sizes = _byte_level_sizes(tokenizer)
        else:
            raise ValueError(f"{tokenizer!r}: byte lengths of its ids are unknown.")
        lengths = np.asarray(sizes, dtype=np.int32)  # a 16M-token block gathers 64 MB
        lengths[tokenizer.eot_id] = 0  # the separator: prepare counts no bytes for it
        _LENGTHS[tokenizer.identifier] = lengths
    return _LENGTHS[tokenizer.identifier]


def _byte_level_sizes(tokenizer: Tokenizer) -> list[int]:
    """Byte lengths of a trained byte-level BPE's ids, from its tokenizer .json.

    Byte-level BPE writes each byte as one character of a 256-character alphabet, so a
    token's bytes are as many as its characters; a token outside that alphabet would
    break the rule, so it is refused rather than miscounted.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import pre_tokenizers

    hf = HFTokenizer.from_file(tokenizer.spec)
    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    sizes = [0] * tokenizer.vocab_size
    for text, i in hf.get_vocab(with_added_tokens=False).items():
        if i != tokenizer.eot_id and not set(text) <= alphabet:
            raise ValueError(
                f"{tokenizer.spec}: token {i} ({text!r}) is not byte-level, so the bytes of a "
                f"text cannot be counted from its ids. Train the tokenizer with "
                f"`gpt2repro tokenizer train`."
            )
        sizes[i] = len(text)
    return sizes


def dataset_tokenizer(
    data_dir: Path, manifest: dict[str, Any], tokenizer: Tokenizer | None = None
) -> Tokenizer:
    """The tokenizer the dataset was prepared with: `tokenizer` if it is that one, else the
    manifest's spec loaded again; raise naming the dataset if neither is."""
    from gpt2repro.tokenizer import load_tokenizer

    tok = manifest["tokenizer"]
    fix = (
        f"Put the tokenizer it was prepared with back at {tok['spec']} (`gpt2repro data "
        f"verify` also takes it as --tokenizer PATH)"
    )
    if tokenizer is None:
        try:
            tokenizer = load_tokenizer(tok["spec"])
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(
                f"{data_dir}: cannot load its tokenizer {tok['spec']} ({str(e).rstrip('.')}), "
                f"needed to count the bytes behind bits per byte. {fix}."
            ) from e
    if tokenizer.identifier != tok["identifier"]:
        raise ValueError(
            f"{data_dir}: prepared with tokenizer {tok['identifier']}, not "
            f"{tokenizer.identifier} ({tokenizer.spec}), which is needed to count the bytes "
            f"behind bits per byte. {fix}."
        )
    return tokenizer


def header_problems(
    path: Path, header: ShardHeader, entry: dict[str, Any], manifest: dict[str, Any]
) -> list[str]:
    """Where the header of shard `path` disagrees with its manifest and manifest `entry`."""
    tok = manifest["tokenizer"]
    problems = []
    if header.tokenizer != tok["identifier"]:
        problems.append(
            f"{path}: written by tokenizer {header.tokenizer!r}, but the dataset uses "
            f"{tok['identifier']!r} (a shard from another dataset?)"
        )
    if header.vocab_size != tok["vocab_size"]:
        problems.append(
            f"{path}: written for a vocabulary of {header.vocab_size} tokens, the manifest "
            f"says {tok['vocab_size']}"
        )
    if header.eot_id != tok["eot_id"]:
        problems.append(
            f"{path}: end-of-text id {header.eot_id} in the header, {tok['eot_id']} in the manifest"
        )
    if manifest.get("dtype") not in (None, header.dtype.name):
        problems.append(
            f"{path}: tokens are {header.dtype.name}, the manifest says {manifest['dtype']}"
        )
    if header.count != entry["tokens"]:
        problems.append(f"{path}: holds {header.count} tokens, the manifest says {entry['tokens']}")
    if entry.get("crc32", header.crc32) != header.crc32:
        problems.append(
            f"{path}: CRC-32 {header.crc32:#010x} in the header, {entry['crc32']:#010x} in the manifest"
        )
    return problems


def token_total_problems(data_dir: Path, split: str, info: dict[str, Any]) -> list[str]:
    """The split's token count must be the sum of its shard entries'."""
    listed = sum(entry["tokens"] for entry in info["shards"])
    if listed == info["tokens"]:
        return []
    return [
        f"{Path(data_dir) / MANIFEST}: split {split!r} lists shards with {listed} tokens in all, "
        f"but says it has {info['tokens']}"
    ]


def content_problems(
    data_dir: Path, split: str, info: dict[str, Any], eots: int, nbytes: int | None
) -> list[str]:
    """The split's document and byte counts against what its tokens hold."""
    manifest_path = Path(data_dir) / MANIFEST
    problems = []
    if eots != info["documents"]:
        problems.append(
            f"{manifest_path}: split {split!r} has {info['documents']} documents, but its "
            f"shards hold {eots} end-of-text tokens (one precedes each document)"
        )
    if nbytes is not None and nbytes != info["bytes"]:
        problems.append(
            f"{manifest_path}: split {split!r} says its documents are {info['bytes']} UTF-8 "
            f"bytes, but its tokens spell {nbytes} (bits per byte divides by this count)"
        )
    return problems


def open_split(
    data_dir: Path, manifest: dict[str, Any], split: str
) -> tuple[list[tuple[Path, np.ndarray]], list[str]]:
    """Memory maps of the split's shards, and every way their headers and the manifest's
    token counts disagree: 256 bytes read per shard, cheap enough for every open."""
    info = manifest["splits"][split]
    problems = token_total_problems(data_dir, split, info)
    shards = []
    for path, entry in zip(split_shards(manifest, data_dir, split), info["shards"], strict=True):
        try:
            header, tokens = read_tokens(path)
        except (ShardFormatError, FileNotFoundError) as e:
            problems.append(str(e).rstrip("."))  # a sentence of its own: no ".." once joined
            continue
        problems += header_problems(path, header, entry, manifest)
        shards.append((path, tokens))
    return shards, problems


_CHECKED: dict[tuple[str, ...], dict[str, int]] = {}


def check_split_counts(
    data_dir: Path, split: str, tokenizer: Tokenizer | None = None
) -> dict[str, int]:
    """The split's tokens, documents and UTF-8 bytes from the manifest, once they are known
    to agree with its shards; raise naming the dataset and `data verify` if not.

    Bits per byte divides by these figures, so a wrong one would silently scale it. The
    headers cost 256 bytes a shard; counting bytes reads the split once. The answer is
    kept for the process, keyed by the manifest's entry and the shards' sizes and times,
    so training's repeated evaluations scan once, and a re-prepared dataset again.
    """
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    paths = split_shards(manifest, data_dir, split)
    info = manifest["splits"][split]
    key = (str(data_dir.resolve()), split, repr(manifest["tokenizer"]), repr(info), _stats(paths))
    if key not in _CHECKED:
        problems = _split_problems(data_dir, manifest, split, tokenizer)
        if problems:
            raise ValueError(
                f"{data_dir} does not match its manifest: {'; '.join(problems)}. "
                f"{fix_hint(data_dir, manifest)}"
            )
        _CHECKED[key] = {k: info[k] for k in ("tokens", "documents", "bytes")}
    return dict(_CHECKED[key])


def _stats(paths: list[Path]) -> str:
    """Size, inode and modification time of each file: a change means another scan."""
    stats = []
    for path in paths:
        try:
            st = path.stat()
            stats.append((st.st_size, st.st_ino, st.st_mtime_ns))
        except OSError:
            stats.append((-1, -1, -1))
    return repr(stats)


def _split_problems(
    data_dir: Path,
    manifest: dict[str, Any],
    split: str,
    tokenizer: Tokenizer | None,
) -> list[str]:
    """Headers and token totals first (cheap); only if they agree, the scan for bytes."""
    info = manifest["splits"][split]
    shards, problems = open_split(data_dir, manifest, split)
    if problems:
        return problems
    lengths = token_byte_lengths(dataset_tokenizer(data_dir, manifest, tokenizer))
    tok = manifest["tokenizer"]
    eots = nbytes = 0
    for path, tokens in shards:
        scan = _scan(tokens, tok["eot_id"], lengths, crc=False)
        if scan.nbytes is None:  # an id past the table: a corrupted token
            return [
                f"{path}: token {scan.top} is not below the vocabulary size {tok['vocab_size']}"
            ]
        eots, nbytes = eots + scan.eots, nbytes + scan.nbytes
    return content_problems(data_dir, split, info, eots, nbytes)


def _check_shard(
    path: Path, entry: dict[str, Any], manifest: dict[str, Any], lengths: np.ndarray | None
) -> tuple[list[str], Scan | None]:
    """Problems with one shard, and what its tokens hold (None when they were not read)."""
    try:
        header = read_header(path)
    except (ShardFormatError, FileNotFoundError) as e:
        return [str(e).rstrip(".")], None
    problems = header_problems(path, header, entry, manifest)
    if problems:
        return problems, None
    _, tokens = read_tokens(path)
    scan = _scan(tokens, header.eot_id, lengths, crc=True)
    if scan.top >= header.vocab_size:
        problems.append(
            f"{path}: token {scan.top} is not below the vocabulary size {header.vocab_size}"
        )
    if scan.crc != header.crc32:
        problems.append(f"{path}: the tokens do not match their CRC-32 (the file is corrupted)")
    return problems, scan


def _verify_split(
    data_dir: Path, manifest: dict[str, Any], split: str, lengths: np.ndarray | None
) -> list[str]:
    """Every problem with one split: its shards, then its totals."""
    info = manifest["splits"][split]
    problems: list[str] = []
    eots, nbytes = 0, None if lengths is None else 0
    for entry in info["shards"]:
        found, scan = _check_shard(data_dir / entry["file"], entry, manifest, lengths)
        problems += found
        if scan is not None:
            eots += scan.eots
            nbytes = None if nbytes is None or scan.nbytes is None else nbytes + scan.nbytes
    problems += token_total_problems(data_dir, split, info)
    if not problems:  # totals of a split whose shards were all read
        problems += content_problems(data_dir, split, info, eots, nbytes)
    return problems


def verify_dataset(data_dir: Path, tokenizer: Tokenizer | None = None) -> dict[str, Any]:
    """Check every shard of the dataset in `data_dir`; return a summary or raise ValueError.

    `tokenizer` is the one the dataset was prepared with, when its manifest's spec no
    longer loads (a tokenizer file moved); it is needed to count the splits' bytes.
    """
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    problems: list[str] = []
    lengths = None
    try:
        lengths = token_byte_lengths(dataset_tokenizer(data_dir, manifest, tokenizer))
    except ValueError as e:
        problems.append(str(e).rstrip("."))
    summary: dict[str, Any] = {"dataset": str(data_dir), "splits": {}}
    for split, info in manifest["splits"].items():
        problems += _verify_split(data_dir, manifest, split, lengths)
        summary["splits"][split] = {
            "shards": len(info["shards"]),
            "tokens": info["tokens"],
            "documents": info["documents"],
            "bytes": info["bytes"],
        }
    listed = {entry["file"] for info in manifest["splits"].values() for entry in info["shards"]}
    for stray in sorted(data_dir.glob("*.bin")):
        if stray.name not in listed:
            problems.append(f"{stray}: a shard that {MANIFEST} does not list; delete it")
    if problems:
        raise ValueError(
            f"{data_dir} failed verification:\n  "
            + "\n  ".join(problems)
            + f"\nFix: {redo_hint(data_dir, manifest)}"
        )
    summary["ok"] = True
    return summary
