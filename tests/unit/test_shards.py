"""The shard file format: header layout, dtype choice, atomic and resumable writes, rejection of bad files."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2repro.data.shards import (
    HEADER_SIZE,
    SHARD_MAGIC,
    ShardBuilder,
    ShardFormatError,
    commit,
    read_header,
    read_tokens,
    shard_name,
    token_dtype,
    write_shard,
)
from gpt2repro.data.shards import tmp_path as shard_tmp_path


def test_token_dtype_uses_uint16_while_ids_fit() -> None:
    assert token_dtype(1) == np.uint16
    assert token_dtype(50257) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535
    assert token_dtype(65537) == np.uint32
    assert token_dtype(200_019) == np.uint32
    for bad in (0, -3, (1 << 32) + 1):
        with pytest.raises(ValueError, match="vocab_size"):
            token_dtype(bad)


def test_shard_names_sort_in_order() -> None:
    names = [shard_name("train", i) for i in (0, 9, 10, 123456)]
    assert names[0] == "train_000000.bin" and names == sorted(names)


def test_uint16_round_trip_and_header_layout(tmp_path: Path) -> None:
    tokens = np.array([50256, 0, 1, 2, 50255, 7], dtype=np.uint16)
    path = tmp_path / "train_000000.bin"
    header = write_shard(path, tokens, vocab_size=50257, eot_id=50256, tokenizer="gpt2")
    raw = path.read_bytes()
    assert len(raw) == HEADER_SIZE + 2 * len(tokens)
    # The documented layout, byte for byte.
    assert raw[:8] == SHARD_MAGIC
    version, itemsize, count, vocab, crc, eot = struct.unpack_from("<IIQQII", raw, 8)
    assert (version, itemsize, count, vocab, eot) == (1, 2, 6, 50257, 50256)
    assert crc == zlib.crc32(tokens.tobytes()) == header.crc32
    assert raw[40:104].rstrip(b"\0") == b"gpt2" and raw[104:HEADER_SIZE] == bytes(152)
    got_header, got = read_tokens(path)
    assert got_header == header and got.dtype == np.uint16
    np.testing.assert_array_equal(got, tokens)


def test_uint32_shard_with_a_large_vocabulary(tmp_path: Path) -> None:
    vocab = 100_277  # cl100k-sized: ids above 65535 need four bytes
    tokens = np.array([0, 65535, 65536, 99_999, vocab - 1], dtype=np.int64)
    path = tmp_path / "val_000000.bin"
    header = write_shard(path, tokens, vocab_size=vocab, eot_id=vocab - 1, tokenizer="bpe-abc")
    assert header.itemsize == 4 and path.stat().st_size == HEADER_SIZE + 4 * len(tokens)
    got_header, got = read_tokens(path)
    assert got.dtype == np.uint32 and got_header.tokenizer == "bpe-abc"
    np.testing.assert_array_equal(got, tokens)


@settings(max_examples=25, deadline=None)
@given(
    vocab=st.sampled_from([2, 300, 50257, 65536, 65537, 1 << 20]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
)
def test_any_tokens_round_trip(
    tmp_path_factory: pytest.TempPathFactory, vocab: int, seed: int, n: int
) -> None:
    tokens = np.random.default_rng(seed).integers(0, vocab, size=n)
    path = tmp_path_factory.mktemp("shards") / "train_000000.bin"
    write_shard(path, tokens, vocab_size=vocab, eot_id=0, tokenizer="t")
    header, got = read_tokens(path)
    assert header.count == n and header.dtype == token_dtype(vocab)
    np.testing.assert_array_equal(got, tokens)


def test_write_shard_rejects_tokens_outside_the_vocabulary(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not below vocab_size=10"):
        write_shard(tmp_path / "a.bin", np.array([3, 10]), vocab_size=10, eot_id=0, tokenizer="t")
    assert list(tmp_path.iterdir()) == []


def _good_shard(tmp_path: Path) -> Path:
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(100), vocab_size=50257, eot_id=50256, tokenizer="gpt2")
    return path


def test_truncated_shard_is_rejected(tmp_path: Path) -> None:
    path = _good_shard(tmp_path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ShardFormatError, match=r"train_000000\.bin: truncated"):
        read_header(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ShardFormatError, match="shorter than the 256-byte header"):
        read_header(path)


def test_trailing_bytes_are_rejected(tmp_path: Path) -> None:
    path = _good_shard(tmp_path)
    path.write_bytes(path.read_bytes() + b"\0\0")
    with pytest.raises(ShardFormatError, match="has trailing bytes"):
        read_header(path)


def test_wrong_magic_and_future_version_are_rejected(tmp_path: Path) -> None:
    path = _good_shard(tmp_path)
    raw = bytearray(path.read_bytes())
    path.write_bytes(b"NOTASHRD" + raw[8:])
    with pytest.raises(ShardFormatError, match=r"train_000000\.bin: not a gpt2repro shard"):
        read_header(path)
    struct.pack_into("<I", raw, 8, 99)
    path.write_bytes(bytes(raw))
    with pytest.raises(ShardFormatError, match="format version 99"):
        read_header(path)


def test_missing_shard_is_a_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing"):
        read_header(tmp_path / "nope.bin")


def test_builder_never_leaves_a_valid_looking_file_before_commit(tmp_path: Path) -> None:
    path = tmp_path / "train_000003.bin"
    builder = ShardBuilder(path, np.dtype(np.uint16), capacity=10)
    assert builder.append(np.arange(4)) == 4
    assert builder.append(np.arange(20)) == 6  # only what fits
    assert builder.free == 0
    builder.sync()
    assert not path.exists()
    with pytest.raises(ShardFormatError, match="not a gpt2repro shard"):
        read_header(tmp_path / "train_000003.bin.tmp")  # the all-zero placeholder header
    builder.finish(50257, 50256, "gpt2")
    assert not path.exists()
    commit(path)
    assert not shard_tmp_path(path).exists()
    _, got = read_tokens(path)
    np.testing.assert_array_equal(got, [0, 1, 2, 3, 0, 1, 2, 3, 4, 5])


def test_builder_resumes_from_a_checkpointed_length(tmp_path: Path) -> None:
    path = tmp_path / "val_000000.bin"
    first = ShardBuilder(path, np.dtype(np.uint32), capacity=8)
    first.append(np.array([9, 8, 7, 6, 5]))
    first.sync()
    first.close()  # killed here; a checkpoint had recorded 3 tokens
    again = ShardBuilder(path, np.dtype(np.uint32), capacity=8, keep=3)
    assert again.count == 3 and again.crc == zlib.crc32(np.array([9, 8, 7], np.uint32).tobytes())
    again.append(np.array([1, 2]))
    header = again.finish(100, 0, "t")
    commit(path)
    _, got = read_tokens(path)
    np.testing.assert_array_equal(got, [9, 8, 7, 1, 2])
    assert header.crc32 == zlib.crc32(got.tobytes())


def test_builder_refuses_to_resume_a_short_file(tmp_path: Path) -> None:
    path = tmp_path / "val_000000.bin"
    with pytest.raises(ValueError, match="expected at least"):
        ShardBuilder(path, np.dtype(np.uint16), capacity=8, keep=3)


def test_empty_shard_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "val_000000.bin"
    write_shard(path, np.array([], dtype=np.int64), vocab_size=5, eot_id=4, tokenizer="t")
    header, got = read_tokens(path)
    assert header.count == 0 and len(got) == 0
