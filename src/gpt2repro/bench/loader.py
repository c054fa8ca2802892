"""`gpt2repro bench loader`: tokens/s of the data loader against raw reading of the same windows.

Tokens/s that `TokenLoader.next_batch()` delivers, with and without its prefetch thread,
against raw reading of the same windows (memory-map slices copied into one (B, T + 1)
int64 array, x and y as views of it) in the same run. Both sides read the
windows of the loader's documented order (module docstring of `gpt2repro.data.loader`),
and the bench checks that they return the same tokens. The timed windows are read once
before timing, so both measure the host-side work on data in the page cache, not disk
reads, and not the copy to a GPU. The loop does nothing but take batches: prefetch can
only hide the loader behind a training step, which this loop does not have.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2repro.bench.common import hardware, median_ratio
from gpt2repro.data.loader import TokenLoader
from gpt2repro.data.manifest import read_manifest, split_shards
from gpt2repro.data.shards import read_tokens, token_dtype
from gpt2repro.data.verify import token_byte_lengths
from gpt2repro.data.writer import DatasetWriter, TokenizerInfo
from gpt2repro.tokenizer import GPT2Tokenizer

LOADER_SHAPES = ((16, 1024), (32, 128))
"""(micro-batch, sequence length): the 124M preset's on one GPU, and shakespeare_cpu's."""
SYNTHETIC_TOKENIZER = TokenizerInfo("gpt2", "gpt2", vocab_size=50257, eot_id=50256)
"""Random GPT-2 ids: uint16 shards, like every dataset prepared with the GPT-2 tokenizer."""


def parse_shape(text: str) -> tuple[int, int]:
    """`16x1024` -> (16, 1024): micro-batch x sequence length."""
    b, sep, t = text.lower().partition("x")
    if not (sep and b.isdigit() and t.isdigit() and int(b) > 0 and int(t) > 0):
        raise ValueError(f"Shape {text!r} is not BATCHxSEQ_LEN in positive integers, e.g. 16x1024.")
    return int(b), int(t)


def write_synthetic_dataset(
    out_dir: Path, tokens: int, shard_tokens: int = 1 << 24, seed: int = 0
) -> Path:
    """A prepared dataset of `tokens` random GPT-2 ids in documents of 256-8191 tokens.

    Written by the same `DatasetWriter` and manifest layout as `prepare`, so the loader
    reads it exactly as a real one. The last document goes to val, the rest to train.
    """
    if tokens < 2 or shard_tokens < 2:
        raise ValueError(f"tokens={tokens} and shard_tokens={shard_tokens} must be at least 2.")
    rng = np.random.default_rng(seed)
    tok = SYNTHETIC_TOKENIZER
    dtype = token_dtype(tok.vocab_size)
    ids = rng.integers(0, tok.eot_id, size=tokens, dtype=dtype)
    starts = np.cumsum(rng.integers(256, 8192, size=tokens // 256 + 1))
    starts = np.concatenate([[0], starts[starts < tokens]])
    ids[starts] = tok.eot_id  # every document starts with <|endoftext|>, as prepare writes
    ends = np.append(starts[1:], tokens)
    settings = {"dataset": "synthetic", "shard_tokens": shard_tokens, "seed": seed}
    source = {"kind": "synthetic", "tokens": tokens}
    writer = DatasetWriter(
        out_dir, {"settings": settings, "source": source}, tok, shard_tokens, dtype
    )
    sizes = token_byte_lengths(GPT2Tokenizer())  # what the ids decode to, as verify recounts
    try:
        for doc, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            split = "val" if doc == len(starts) - 1 else "train"
            writer.add(doc, split, ids[lo:hi], nbytes=int(sizes[ids[lo:hi]].sum()))
        splits = writer.finish()
    finally:
        writer.close()
    writer.publish(splits)
    return Path(out_dir)


class RawWindows:
    """Where the rows of the loader's batches lie in the memory-mapped shards, found independently.

    Follows the order the loader documents: window i of a shard starts at token i*T, the
    windows of all shards are numbered in shard order, and epoch e is their permutation
    by numpy's generator seeded with (seed, e), cut into batches of B.
    """

    def __init__(self, data_dir: Path, split: str, batch_size: int, seq_len: int, seed: int):
        manifest = read_manifest(data_dir)
        self.shards = [read_tokens(p)[1] for p in split_shards(manifest, data_dir, split)]
        counts = [max(0, (len(s) - 1) // seq_len) for s in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.B, self.T, self.seed = batch_size, seq_len, seed
        self.per_epoch = int(self.starts[-1]) // batch_size

    def plan(self, first: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(shard, token offset) of each row of batches [first, first + count): two (count, B) arrays."""
        assert self.per_epoch > 0, f"{self.starts[-1]} windows, batch {self.B}"
        perms: dict[int, np.ndarray] = {}
        rows = []
        for k in range(first, first + count):
            epoch, b = divmod(k, self.per_epoch)
            if epoch not in perms:
                perms[epoch] = np.arange(self.starts[-1], dtype=np.int64)
                np.random.default_rng([self.seed, epoch]).shuffle(perms[epoch])
            rows.append(perms[epoch][b * self.B : (b + 1) * self.B])
        index = np.concatenate(rows)
        shard = np.searchsorted(self.starts, index, side="right") - 1
        offset = (index - self.starts[shard]) * self.T
        return shard.reshape(count, self.B), offset.reshape(count, self.B)

    def read(self, shard: np.ndarray, offset: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of one batch given its rows' (shard, offset): (B, T) int64 views of one array."""
        T = self.T
        buf = np.empty((len(offset), T + 1), dtype=np.int64)  # (B, T+1)
        for row, (s, o) in enumerate(zip(shard.tolist(), offset.tolist(), strict=True)):
            buf[row] = self.shards[s][o : o + T + 1]
        both = torch.from_numpy(buf)
        return both[:, :-1], both[:, 1:]


Batch = tuple[torch.Tensor, torch.Tensor]


def _time_raw(raw: RawWindows, shard: np.ndarray, offset: np.ndarray) -> tuple[float, list[Batch]]:
    """Seconds to read every planned batch, and the first and last batch."""
    kept = []
    t0 = time.perf_counter()
    for k in range(len(offset)):
        batch = raw.read(shard[k], offset[k])
        if k in (0, len(offset) - 1):
            kept.append(batch)
    return time.perf_counter() - t0, kept


def _time_loader(
    data_dir: Path,
    split: str,
    shape: tuple[int, int],
    seed: int,
    prefetch: int,
    skip: int,
    count: int,
) -> tuple[float, list[Batch]]:
    """Seconds for `count` next_batch() calls after `skip` untimed ones, and the first and last."""
    B, T = shape
    with TokenLoader(data_dir, split, B, T, seed=seed, prefetch=prefetch) as loader:
        for _ in range(skip):  # the permutation, the thread's start and a full queue
            loader.next_batch()
        kept = []
        t0 = time.perf_counter()
        for k in range(count):
            batch = loader.next_batch()
            if k in (0, count - 1):
                kept.append(batch)
        return time.perf_counter() - t0, kept


def _same(a: list[Batch], b: list[Batch]) -> bool:
    return all(
        torch.equal(p, q) for u, v in zip(a, b, strict=True) for p, q in zip(u, v, strict=True)
    )


def _bench_shape(
    data_dir: Path,
    split: str,
    shape: tuple[int, int],
    prefetch: Sequence[int],
    tokens: int,
    rounds: int,
    seed: int,
) -> dict[str, Any]:
    """One row of bench_loader: rates from each side's fastest round, ratios as medians."""
    B, T = shape
    skip = max(prefetch) + 2
    count = max(2, tokens // (B * T))
    raw = RawWindows(data_dir, split, B, T, seed)
    if raw.per_epoch == 0:
        raise ValueError(
            f"Split {split!r} of {data_dir} has fewer windows than one batch of {B}x{T}. "
            f"Use smaller shapes or a larger dataset."
        )
    shard, offset = raw.plan(skip, count)
    _time_raw(raw, shard, offset)  # pages of the timed windows into the page cache
    seconds: dict[str, list[float]] = {"raw": [], **{f"prefetch{p}": [] for p in prefetch}}
    same = True
    for _ in range(rounds):
        s, want = _time_raw(raw, shard, offset)
        seconds["raw"].append(s)
        for p in prefetch:
            s, got = _time_loader(data_dir, split, shape, seed, p, skip, count)
            seconds[f"prefetch{p}"].append(s)
            same = same and _same(got, want)
    row: dict[str, Any] = {"batch_size": B, "seq_len": T, "batches": count}
    for key, values in seconds.items():
        name = "raw" if key == "raw" else f"loader_{key}"
        row[f"{name}_tokens_per_s"] = count * B * T / min(values)
    for p in prefetch:
        # raw seconds / loader seconds: the loader's speed as a fraction of raw reading
        row[f"ratio_prefetch{p}_vs_raw"] = median_ratio(seconds["raw"], seconds[f"prefetch{p}"])
    row["same_tokens"] = same
    row["seconds"] = {k: [round(x, 4) for x in v] for k, v in seconds.items()}
    return row


def bench_loader(
    data_dir: Path | None = None,
    split: str = "train",
    shapes: Sequence[tuple[int, int]] = LOADER_SHAPES,
    prefetch: Sequence[int] = (0, 2),
    tokens: int = 1 << 24,
    rounds: int = 5,
    synthetic_tokens: int = 1 << 25,
    seed: int = 0,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Tokens/s of TokenLoader and of raw reading per shape, and their ratio (asserts nothing).

    `tokens` is read per measurement (each shape, side and round); without `data_dir`
    a dataset of `synthetic_tokens` random tokens in 2^24-token shards is written to a
    temporary directory (under `work_dir`) first.
    """
    problems = []
    if not shapes or min(min(s) for s in shapes) < 1:
        problems.append(
            f"shapes={list(shapes)} must be non-empty (batch, seq_len) pairs of positive ints"
        )
    if not prefetch or min(prefetch) < 0:
        problems.append(f"prefetch={list(prefetch)} must be non-empty settings of 0 (off) or more")
    if tokens < 1 or rounds < 1 or synthetic_tokens < 2:
        problems.append(
            f"tokens={tokens} and rounds={rounds} must be at least 1, synthetic_tokens="
            f"{synthetic_tokens} at least 2"
        )
    if problems:
        raise ValueError("Bad bench_loader arguments: " + "; ".join(problems) + ".")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        if data_dir is None:
            data = write_synthetic_dataset(Path(tmp) / "synthetic", synthetic_tokens, seed=seed)
        else:
            data = Path(data_dir)
        rows = []
        for shape in shapes:
            rows.append(_bench_shape(data, split, shape, prefetch, tokens, rounds, seed))
        split_tokens = read_manifest(data)["splits"][split]["tokens"]
    return {
        "bench": "loader",
        "date": date.today().isoformat(),
        "data_dir": "synthetic" if data_dir is None else str(data_dir),
        "split": split,
        "split_tokens": split_tokens,
        "rounds": rounds,
        "rows": rows,
        "hardware": {
            **hardware(),
            "cores": os.cpu_count(),
            "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        },
    }
