"""`verify_dataset`: check a prepared dataset shard by shard against its headers and manifest.

Checked: each shard's magic, format version, dtype and exact file size; that its tokenizer
and vocabulary are the manifest's; its token count and CRC-32; that every token is below
the vocabulary size; that each split's shards add up to the manifest's token count and hold
one <|endoftext|> per document; and that no unlisted shard lies next to them. Every
problem is reported at once, each naming its file, followed by the fix.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np

from gpt2repro.data.manifest import MANIFEST, read_manifest, redo_hint
from gpt2repro.data.shards import ShardFormatError, read_header, read_tokens

# Tokens per block when scanning a shard: 32 MB of uint16, whatever the shard size.
_BLOCK = 1 << 24


def _scan(tokens: np.ndarray, eot_id: int) -> tuple[int, int, int]:
    """(max token, number of eot tokens, crc32) of a shard, reading it block by block."""
    top, eots, crc = -1, 0, 0
    for start in range(0, len(tokens), _BLOCK):
        block = np.ascontiguousarray(tokens[start : start + _BLOCK])  # one copy per block
        top = max(top, int(block.max()))
        eots += int(np.count_nonzero(block == eot_id))
        crc = zlib.crc32(block.data, crc)
    return top, eots, crc


def _check_shard(
    path: Path, entry: dict[str, Any], tok: dict[str, Any], dtype: str
) -> tuple[list[str], int]:
    """Problems with one shard, and its number of eot tokens."""
    try:
        header = read_header(path)
    except (ShardFormatError, FileNotFoundError) as e:
        return [str(e)], 0
    problems = []
    if header.tokenizer != tok["identifier"]:
        problems.append(
            f"{path}: written by tokenizer {header.tokenizer!r}, but the dataset uses "
            f"{tok['identifier']!r} (a shard from another dataset?)"
        )
    if header.vocab_size != tok["vocab_size"]:
        problems.append(
            f"{path}: vocabulary size {header.vocab_size} in the header, {tok['vocab_size']} in the manifest"
        )
    if header.dtype.name != dtype:
        problems.append(f"{path}: tokens are {header.dtype.name}, the manifest says {dtype}")
    if header.count != entry["tokens"]:
        problems.append(f"{path}: holds {header.count} tokens, the manifest says {entry['tokens']}")
    if problems:
        return problems, 0
    _, tokens = read_tokens(path)
    top, eots, crc = _scan(tokens, tok["eot_id"])
    if top >= header.vocab_size:
        problems.append(f"{path}: token {top} is not below the vocabulary size {header.vocab_size}")
    if crc != header.crc32 or ("crc32" in entry and crc != entry["crc32"]):
        problems.append(f"{path}: the tokens do not match their CRC-32 (the file is corrupted)")
    return problems, eots


def verify_dataset(data_dir: Path) -> dict[str, Any]:
    """Check every shard of the dataset in `data_dir`; return a summary or raise ValueError."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    tok = manifest["tokenizer"]
    problems: list[str] = []
    listed = set()
    summary: dict[str, Any] = {"dataset": str(data_dir), "splits": {}}
    for split, info in manifest["splits"].items():
        tokens = eots = 0
        for entry in info["shards"]:
            path = data_dir / entry["file"]
            listed.add(entry["file"])
            found, n_eot = _check_shard(path, entry, tok, manifest.get("dtype", ""))
            problems += found
            tokens += entry["tokens"]
            eots += n_eot
        manifest_path = data_dir / MANIFEST
        if tokens != info["tokens"]:
            problems.append(
                f"{manifest_path}: split {split!r} lists shards with {tokens} tokens in all, "
                f"but says it has {info['tokens']}"
            )
        if not problems and eots != info["documents"]:
            problems.append(
                f"{manifest_path}: split {split!r} has {info['documents']} documents, but its "
                f"shards hold {eots} end-of-text tokens (one precedes each document)"
            )
        summary["splits"][split] = {
            "shards": len(info["shards"]),
            "tokens": info["tokens"],
            "documents": info["documents"],
            "bytes": info["bytes"],
        }
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
