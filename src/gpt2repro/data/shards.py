"""The token shard file format: a fixed 256-byte header followed by the raw token ids.

Layout (all integers little-endian):

    offset  size  field
    0       8     magic b"G2RSHARD"
    8       4     format version (uint32), currently 1
    12      4     bytes per token (uint32): 2 = uint16, 4 = uint32
    16      8     token count (uint64)
    24      8     vocabulary size (uint64); every token is below it
    32      4     CRC-32 (zlib) of the token bytes (uint32)
    36      4     end-of-text id (uint32)
    40      64    tokenizer identifier, UTF-8, NUL-padded (`Tokenizer.identifier`)
    104     152   zero
    256     ...   count tokens

A file is a valid shard only when its size is exactly 256 + count * bytes-per-token, so a
truncated copy is caught from the header alone. `read_header` also refuses any field
outside its defined values (bytes 104..255 non-zero, an end-of-text id not below the
vocabulary size, ...); what a field must equal for one dataset (tokenizer, vocabulary,
end-of-text id, count, CRC-32) is checked against its manifest by
`data.verify.header_problems`. Shards are written under a `.tmp` name and renamed into
place once complete (a rename is atomic), so a killed writer never leaves a file that
looks like a finished shard; an unfinished `.tmp` has an all-zero header.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

SHARD_MAGIC = b"G2RSHARD"
FORMAT_VERSION = 1
HEADER_SIZE = 256
TOKENIZER_FIELD_BYTES = 64
_HEADER = struct.Struct("<8sIIQQII64s")
assert _HEADER.size <= HEADER_SIZE, _HEADER.size
# 2 bytes hold ids 0..65535, so any vocabulary of at most 65536 entries (GPT-2's 50257 included).
UINT16_MAX_VOCAB = 1 << 16


class ShardFormatError(ValueError):
    """A file that is not a valid, complete shard; `problem` says why, without the path."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in two bytes, uint32 otherwise."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size={vocab_size} must be at least 1.")
    if vocab_size > 1 << 32:
        raise ValueError(f"vocab_size={vocab_size} does not fit in uint32 token ids.")
    return np.dtype(np.uint16) if vocab_size <= UINT16_MAX_VOCAB else np.dtype(np.uint32)


def shard_name(split: str, index: int) -> str:
    """`train_000000.bin`, ...: zero-padded so names sort in shard order."""
    return f"{split}_{index:06d}.bin"


def tmp_path(path: Path) -> Path:
    """Where the shard at `path` is built before it is renamed into place."""
    return path.with_name(path.name + ".tmp")


@dataclass(frozen=True)
class ShardHeader:
    """The decoded header of one shard."""

    count: int
    """number of tokens after the header"""
    vocab_size: int
    """every token is below this"""
    tokenizer: str
    """identifier of the tokenizer that produced the ids"""
    eot_id: int
    """id of <|endoftext|>, which precedes every document"""
    crc32: int
    """zlib CRC-32 of the token bytes"""
    itemsize: int
    """bytes per token: 2 (uint16) or 4 (uint32)"""
    version: int = FORMAT_VERSION
    """shard format version"""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16) if self.itemsize == 2 else np.dtype(np.uint32)

    @property
    def file_size(self) -> int:
        return HEADER_SIZE + self.count * self.itemsize

    def pack(self) -> bytes:
        name = self.tokenizer.encode("utf-8")
        if len(name) > TOKENIZER_FIELD_BYTES:
            raise ValueError(
                f"tokenizer identifier {self.tokenizer!r} is longer than "
                f"{TOKENIZER_FIELD_BYTES} bytes and cannot be stored in a shard header."
            )
        fields = (SHARD_MAGIC, self.version, self.itemsize, self.count, self.vocab_size)
        raw = _HEADER.pack(*fields, self.crc32, self.eot_id, name)
        return raw + bytes(HEADER_SIZE - len(raw))


def read_header(path: Path) -> ShardHeader:
    """Decode and check the header of `path`, including that the file size matches it."""
    path = Path(path)
    if not path.is_file():
        # No final period, like every ShardFormatError: callers append their own advice.
        raise FileNotFoundError(f"{path}: shard file is missing")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(HEADER_SIZE)
    if len(raw) < HEADER_SIZE:
        raise ShardFormatError(
            path, f"only {size} bytes, shorter than the {HEADER_SIZE}-byte header"
        )
    magic, version, itemsize, count, vocab, crc, eot, name = _HEADER.unpack_from(raw)
    if magic != SHARD_MAGIC:
        raise ShardFormatError(
            path, f"not a gpt2repro shard (magic {magic!r}, want {SHARD_MAGIC!r})"
        )
    if version != FORMAT_VERSION:
        raise ShardFormatError(
            path, f"shard format version {version}; this gpt2repro reads version {FORMAT_VERSION}"
        )
    if itemsize not in (2, 4):
        raise ShardFormatError(path, f"bytes per token is {itemsize}; only 2 and 4 exist")
    problem = _field_problem(raw, itemsize, vocab, eot, name)
    if problem:
        raise ShardFormatError(path, problem)
    header = ShardHeader(
        count=count,
        vocab_size=vocab,
        tokenizer=name.rstrip(b"\0").decode("utf-8"),
        eot_id=eot,
        crc32=crc,
        itemsize=itemsize,
        version=version,
    )
    if size != header.file_size:
        what = "truncated" if size < header.file_size else "has trailing bytes"
        raise ShardFormatError(
            path, f"{what}: the file is {size} bytes, its header says {header.file_size}"
        )
    return header


def _field_problem(raw: bytes, itemsize: int, vocab: int, eot: int, name: bytes) -> str | None:
    """What is wrong with the header fields that have a fixed rule, or None.

    Every field has a defined value, so any other value means a damaged or foreign file;
    the rules need only the 256 header bytes, so every reader can afford them.
    """
    reserved = raw[_HEADER.size : HEADER_SIZE]
    if any(reserved):
        first = _HEADER.size + next(i for i, b in enumerate(reserved) if b)
        zero = f"{_HEADER.size}..{HEADER_SIZE - 1}"
        return f"header byte {first} is {raw[first]:#04x}; bytes {zero} must be zero"
    if not 1 <= vocab <= 1 << 32:
        return f"vocabulary size {vocab} is impossible (1 to 2**32 ids fit in a shard)"
    if itemsize == 2 and vocab > UINT16_MAX_VOCAB:
        return f"2-byte tokens cannot hold the ids of a vocabulary of {vocab}"
    if eot >= vocab:
        return f"end-of-text id {eot} is not below the vocabulary size {vocab}"
    text = name.rstrip(b"\0")
    if b"\0" in text:
        return "the tokenizer identifier field has bytes after its NUL padding"
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        return "the tokenizer identifier field is not UTF-8"
    return None


def read_tokens(path: Path) -> tuple[ShardHeader, np.ndarray]:
    """Header and a read-only memory map of the tokens of the shard at `path`."""
    header = read_header(path)
    if header.count == 0:
        # np.memmap refuses zero-length maps; an empty array behaves the same for readers.
        return header, np.memmap(path, dtype=np.uint8, mode="r", shape=(HEADER_SIZE,))[:0].view(
            header.dtype
        )
    tokens = np.memmap(
        path, dtype=header.dtype, mode="r", offset=HEADER_SIZE, shape=(header.count,)
    )
    return header, tokens


def fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` survive a power loss (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class ShardBuilder:
    """Builds one shard in `<name>.tmp` by appending tokens; `commit()` renames it into place.

    `keep` > 0 reopens an existing `.tmp` from an interrupted run and keeps its first
    `keep` tokens, dropping anything written after the last checkpoint.
    """

    def __init__(self, path: Path, dtype: np.dtype, capacity: int, keep: int = 0) -> None:
        assert capacity > 0, capacity
        self.path = Path(path)
        self.tmp = tmp_path(self.path)
        self.dtype = np.dtype(dtype)
        self.capacity = capacity
        self.count = 0
        self.crc = 0
        self._file: BinaryIO
        if keep == 0:
            # The file stays open across append() calls until finish()/close().
            self._file = open(self.tmp, "wb")  # noqa: SIM115
            # An all-zero header: an unfinished shard can never pass the magic check.
            self._file.write(bytes(HEADER_SIZE))
            return
        need = HEADER_SIZE + keep * self.dtype.itemsize
        if not self.tmp.is_file() or self.tmp.stat().st_size < need:
            raise ValueError(
                f"{self.tmp}: expected at least {need} bytes from the interrupted run, found "
                f"{self.tmp.stat().st_size if self.tmp.is_file() else 'no file'}."
            )
        self._file = open(self.tmp, "r+b")  # noqa: SIM115
        self._file.truncate(need)
        self._file.seek(HEADER_SIZE)
        remaining = keep * self.dtype.itemsize
        while remaining:
            block = self._file.read(min(remaining, 1 << 24))
            self.crc = zlib.crc32(block, self.crc)
            remaining -= len(block)
        self.count = keep

    @property
    def free(self) -> int:
        return self.capacity - self.count

    def append(self, tokens: np.ndarray) -> int:
        """Write as many of `tokens` as fit; return how many were taken."""
        take = min(len(tokens), self.free)
        if take:
            data = np.ascontiguousarray(tokens[:take], dtype=self.dtype).data
            self._file.write(data)
            self.crc = zlib.crc32(data, self.crc)
            self.count += take
        return take

    def sync(self) -> None:
        """Flush the tokens written so far to disk (before a checkpoint records them)."""
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self, vocab_size: int, eot_id: int, tokenizer: str) -> ShardHeader:
        """Write the real header into the `.tmp` file and close it (still not committed)."""
        header = ShardHeader(
            count=self.count,
            vocab_size=vocab_size,
            tokenizer=tokenizer,
            eot_id=eot_id,
            crc32=self.crc,
            itemsize=self.dtype.itemsize,
        )
        self._file.seek(0)
        self._file.write(header.pack())
        self.sync()
        self._file.close()
        return header

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def commit(path: Path) -> None:
    """Rename the finished `<path>.tmp` to `path`: the moment the shard becomes valid."""
    os.replace(tmp_path(path), path)
    fsync_dir(path.parent)


def write_shard(
    path: Path, tokens: np.ndarray, *, vocab_size: int, eot_id: int, tokenizer: str
) -> ShardHeader:
    """Write `tokens` as one complete shard at `path`, atomically."""
    tokens = np.asarray(tokens)
    dtype = token_dtype(vocab_size)
    if len(tokens) and int(tokens.max()) >= vocab_size:
        raise ValueError(f"token {int(tokens.max())} is not below vocab_size={vocab_size}.")
    builder = ShardBuilder(Path(path), dtype, capacity=max(len(tokens), 1))
    try:
        builder.append(tokens)
        header = builder.finish(vocab_size, eot_id, tokenizer)
    finally:
        builder.close()
    commit(Path(path))
    return header
