"""Batches for training and evaluation, read from memory-mapped shards.

A split is cut into non-overlapping windows of T + 1 tokens: window i of a shard covers
tokens [i*T, i*T + T + 1), x is its first T tokens and y its last T. Windows never cross
shard boundaries, so a shard's last < T + 1 tokens are never read as training input.

Training (`TokenLoader`): epoch e is a permutation of all windows of all shards drawn with
numpy's generator seeded by (seed, e), so every window appears once per epoch, no shard
stays in order (no periodic loss), and each epoch is shuffled differently. Rank r of W
takes, for its k-th batch of the epoch, windows perm[(k*W + r)*B : (k*W + r + 1)*B]: ranks
are disjoint and together cover the epoch up to the dropped last partial global batch
(how many windows an epoch uses is fixed when a run starts and kept across resumes).
The state is the position of the next batch to *return* (not to prefetch), so a run
restored with `load_state_dict` sees exactly the batches it would have seen, also on
another number of ranks or with another micro-batch (same global order, same windows).

Evaluation (`eval_batches`): the same windows in order, no shuffle, split across ranks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2repro.data.manifest import fix_hint, read_manifest, split_shards
from gpt2repro.data.verify import open_split

__all__ = ["TokenLoader", "eval_batches", "read_manifest", "to_device"]

STATE_KEYS = ("epoch", "batch", "seed", "batch_size", "seq_len", "world_size", "windows")


def _check_args(batch_size: int, seq_len: int, rank: int, world_size: int) -> None:
    problems = []
    if batch_size < 1:
        problems.append(f"batch_size={batch_size} must be at least 1")
    if seq_len < 1:
        problems.append(f"seq_len={seq_len} must be at least 1")
    if world_size < 1 or not 0 <= rank < world_size:
        problems.append(f"rank={rank} must be in [0, world_size={world_size})")
    if problems:
        raise ValueError("Bad loader arguments: " + "; ".join(problems) + ".")


class Windows:
    """The (T + 1)-token windows of one split, across its memory-mapped shards.

    Opening a split checks what costs only the headers: every header field, and that
    the manifest's per-shard and split token counts are the headers' (`data.verify`).
    Token ids are checked per batch as it is read (`_check_ids`). Reading whole splits is
    left to `gpt2repro data verify` (CRC-32, every id) and, for the split bits per byte is
    computed on, to `data.verify.check_split_counts` (its byte count).
    """

    def __init__(self, data_dir: Path, split: str, seq_len: int) -> None:
        manifest = read_manifest(data_dir)
        self.vocab_size: int = manifest["tokenizer"]["vocab_size"]
        self.seq_len = seq_len
        self.data_dir = data_dir
        self.paths = split_shards(manifest, data_dir, split)
        opened, problems = open_split(data_dir, manifest, split)
        if problems:
            raise ValueError(
                f"{data_dir} does not match its manifest: {'; '.join(problems)}. "
                f"{fix_hint(data_dir, manifest)}"
            )
        self.shards = [tokens for _, tokens in opened]
        counts = [max(0, (len(t) - 1) // seq_len) for t in self.shards]
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        self.total = int(self.starts[-1])
        self.name = f"split {split!r} of {data_dir}"

    def gather(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """x, y of windows `index` (global window numbers): two (len(index), T) int64 arrays."""
        T = self.seq_len
        shard = np.searchsorted(self.starts, index, side="right") - 1
        local = index - self.starts[shard]
        buf = np.empty((len(index), T + 1), dtype=np.int64)  # (B, T+1)
        for row, (s, i) in enumerate(zip(shard.tolist(), local.tolist(), strict=True)):
            buf[row] = self.shards[s][i * T : i * T + T + 1]
        self._check_ids(buf, shard)
        return np.ascontiguousarray(buf[:, :-1]), np.ascontiguousarray(buf[:, 1:])

    def _check_ids(self, buf: np.ndarray, shard: np.ndarray) -> None:
        """Raise naming the shard if a (B, T+1) batch holds an id outside the vocabulary.

        A bit flip in a shard's tokens leaves its header valid; unchecked, such an id
        crashes the embedding lookup with a bare IndexError, or, if it lands in the
        model's padded rows, trains silently on garbage. One max over the host-side batch
        costs far less than copying it, and needs no device sync.
        """
        if buf.size == 0 or int(buf.max()) < self.vocab_size:
            return
        row = int(np.argmax((buf >= self.vocab_size).any(axis=1)))
        bad = int(buf[row].max())
        raise ValueError(
            f"{self.paths[int(shard[row])]}: token {bad} is not below the vocabulary size "
            f"{self.vocab_size}; the shard is corrupted. Run `gpt2repro data verify "
            f"{self.data_dir}` for details."
        )


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`; to a GPU through page-locked memory, so the copy runs asynchronously
    with the GPU's work instead of waiting for it to finish."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _batch_to_device(
    x: np.ndarray, y: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return to_device(torch.from_numpy(x), device), to_device(torch.from_numpy(y), device)


class TokenLoader:
    """Shuffled training batches for one rank; see the module docstring for the order."""

    def __init__(
        self,
        data_dir: Path,
        split: str,
        batch_size: int,
        seq_len: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        device: torch.device | str = "cpu",
        prefetch: int = 2,
    ) -> None:
        _check_args(batch_size, seq_len, rank, world_size)
        if prefetch < 0:
            raise ValueError(f"prefetch={prefetch} must be 0 (off) or more batches.")
        self.windows = Windows(Path(data_dir), split, seq_len)
        self.batch_size, self.seq_len = batch_size, seq_len
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.device = torch.device(device)
        self.pin = self.device.type == "cuda"
        # Windows each epoch uses: its order's first `epoch_windows`. Fixed at a run's start
        # and kept by `load_state_dict`, so epochs end at the same window on any layout.
        self.epoch_windows = (
            self.windows.total // (batch_size * world_size) * batch_size * world_size
        )
        self.batches_per_epoch = self.epoch_windows // (batch_size * world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(
                f"The {self.windows.name} has {self.windows.total} windows of seq_len + 1 = "
                f"{seq_len + 1} tokens, fewer than one global batch of batch_size * world_size "
                f"= {batch_size * world_size}. Lower batch_size or seq_len, or use more data."
            )
        self.prefetch = prefetch
        self._epoch, self._batch = 0, 0  # position of the next batch next_batch() returns
        self._perm: tuple[int, np.ndarray] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(prefetch, 1))
        self._start()

    @property
    def epoch(self) -> int:
        """Epoch of the next batch (0-based); it increments once an epoch's last batch is taken."""
        return self._epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm is None or self._perm[0] != epoch:
            # int32 halves the permutation's memory (10B tokens / T=1024: 40 MB, not 80).
            dtype = np.int32 if self.windows.total < 2**31 else np.int64
            perm = np.arange(self.windows.total, dtype=dtype)
            np.random.default_rng([self.seed, epoch]).shuffle(perm)
            self._perm = (epoch, perm)
        return self._perm[1]

    def _advance(self, epoch: int, batch: int) -> tuple[int, int]:
        return (epoch, batch + 1) if batch + 1 < self.batches_per_epoch else (epoch + 1, 0)

    def _make(self, epoch: int, batch: int) -> tuple[np.ndarray, np.ndarray]:
        B, W = self.batch_size, self.world_size
        lo = (batch * W + self.rank) * B
        return self.windows.gather(self._permutation(epoch)[lo : lo + B])

    def _produce(
        self, epoch: int, batch: int, stop: threading.Event, out: queue.Queue[Any]
    ) -> None:
        try:
            while not stop.is_set():
                x, y = self._make(epoch, batch)
                item: Any = (epoch, batch, torch.from_numpy(x), torch.from_numpy(y))
                if self.pin:
                    item = (epoch, batch, item[2].pin_memory(), item[3].pin_memory())
                self._put(item, stop, out)
                epoch, batch = self._advance(epoch, batch)
        except BaseException as e:  # hand the error to the consumer instead of dying silently
            self._put(e, stop, out)

    @staticmethod
    def _put(item: Any, stop: threading.Event, out: queue.Queue[Any]) -> None:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _start(self) -> None:
        if self.prefetch == 0:
            return
        self._stop = threading.Event()
        self._queue = queue.Queue(maxsize=self.prefetch)
        self._thread = threading.Thread(
            target=self._produce,
            args=(self._epoch, self._batch, self._stop, self._queue),
            name="TokenLoader-prefetch",
            daemon=True,
        )
        self._thread.start()

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y: (batch_size, seq_len) int64 on the device; y is x shifted left by one token."""
        if self._thread is None:
            x, y = self._make(self._epoch, self._batch)
            xt, yt = torch.from_numpy(x), torch.from_numpy(y)
            if self.pin:
                xt, yt = xt.pin_memory(), yt.pin_memory()
        else:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            epoch, batch, xt, yt = item
            assert (epoch, batch) == (self._epoch, self._batch), (
                epoch,
                batch,
                self._epoch,
                self._batch,
            )
        self._epoch, self._batch = self._advance(self._epoch, self._batch)
        if self.device.type == "cpu":
            return xt, yt
        return xt.to(self.device, non_blocking=self.pin), yt.to(self.device, non_blocking=self.pin)

    def state_dict(self) -> dict[str, int]:
        """The position of the next batch, and what it depends on; plain ints, JSON-friendly."""
        return {
            "epoch": self._epoch,
            "batch": self._batch,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "world_size": self.world_size,
            "windows": self.windows.total,
            "epoch_windows": self.epoch_windows,
        }

    def load_state_dict(self, state: dict[str, int]) -> str | None:
        """Continue from `state` (from `state_dict()` of any rank).

        The same setup continues exactly. Another micro-batch size or world size (a run
        resumed on fewer GPUs) continues the same global order from the same window: global
        round k is perm[k*W*B : (k+1)*W*B] whatever W and B, and every epoch still uses the
        first `epoch_windows` of its order (set by the run's first layout), so with the same
        tokens per optimizer step every step sees the windows it would have seen. When the
        windows consumed this epoch are not a multiple of the new W*B, it goes on from the
        next multiple (fewer than one round skipped); when `epoch_windows` is not, each
        epoch's last partial round goes unused. Returns a note that says what changed, or None.
        """
        missing = [k for k in STATE_KEYS if k not in state]
        if missing:
            raise ValueError(
                f"Loader state lacks {', '.join(missing)}; it is not from TokenLoader.state_dict()."
            )
        mine = self.state_dict()
        changed = [
            f"{k} {state[k]} -> {mine[k]}"
            for k in ("seq_len", "windows")
            if int(state[k]) != mine[k]
        ]
        if changed:
            raise ValueError(
                "Cannot resume the data order: " + ", ".join(changed) + ". Resume with the "
                "same sequence length and dataset, or start a new run."
            )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        old_b, old_w = int(state["batch_size"]), int(state["world_size"])
        if old_b < 1 or old_w < 1:
            raise ValueError(f"Loader state layout {old_b} x {old_w} is not a valid one.")
        per_old, per_new = old_b * old_w, self.batch_size * self.world_size
        used = int(state.get("epoch_windows", self.windows.total // per_old * per_old))
        if not 0 <= batch < used // per_old or epoch < 0 or not 0 < used <= self.windows.total:
            raise ValueError(f"Loader state position {epoch}:{batch} is out of range.")
        if used // per_new == 0:
            raise ValueError(
                f"One round of micro-batch {self.batch_size} x {self.world_size} rank(s) is more "
                f"than the {used} windows an epoch of this run uses. Lower --batch.micro-batch."
            )
        note = None
        if (old_b, old_w) != (self.batch_size, self.world_size):
            consumed = batch * per_old
            batch = -(-consumed // per_new)  # the first round that starts at or after it
            skipped = batch * per_new - consumed
            if batch >= used // per_new:
                epoch, batch, skipped = epoch + 1, 0, used - consumed
            note = (
                f"data: micro-batch {old_b} x {old_w} rank(s) -> {self.batch_size} x "
                f"{self.world_size}; epoch {epoch} goes on from window {batch * per_new} of "
                f"its order"
                + (f" ({skipped} skipped to start a whole round)" if skipped else "")
                + (
                    f"; each epoch's last {used % per_new} of its {used} windows go unused, "
                    f"{used} not being a multiple of {per_new}"
                    if used % per_new
                    else ""
                )
            )
        self.epoch_windows = used
        self.batches_per_epoch = used // per_new
        self.close()
        self.seed, self._epoch, self._batch = int(state["seed"]), epoch, batch
        self._perm = None
        self._start()
        return note

    def close(self) -> None:
        """Stop the prefetch thread (next_batch keeps working, without prefetch, after this)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> TokenLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eval_batches(
    data_dir: Path,
    split: str,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None,
    *,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split's windows in order, `max_tokens` target tokens at most in all (None: every window).

    Global batch k gives rank r windows [(k*W + r)*B, (k*W + r + 1)*B); the remainder is
    shared equally as one smaller last batch. Every rank gets the same number of batches
    of the same shapes, so collective operations inside the model (FSDP) stay in step.
    """
    _check_args(batch_size, seq_len, rank, world_size)
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} must be positive, or None for the whole split.")
    windows = Windows(Path(data_dir), split, seq_len)
    n = windows.total if max_tokens is None else min(windows.total, max_tokens // seq_len)
    if n < world_size:
        raise ValueError(
            f"The {windows.name} yields {n} windows of {seq_len + 1} tokens"
            f"{'' if max_tokens is None else f' within max_tokens={max_tokens}'}, fewer than "
            f"the {world_size} rank(s). Use a shorter sequence length (train --batch.seq-len, "
            f"eval --seq-len), a larger token budget (train --eval.val-tokens, eval "
            f"--val-tokens) or prepare more data."
        )
    dev = torch.device(device)
    return _eval_iter(windows, n, batch_size, rank, world_size, dev)


def _eval_iter(
    windows: Windows, n: int, B: int, rank: int, W: int, device: torch.device
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    full = n // (B * W)
    for k in range(full):
        lo = (k * W + rank) * B
        yield _batch_to_device(*windows.gather(np.arange(lo, lo + B)), device)
    share = (n - full * B * W) // W
    if share:
        lo = full * B * W + rank * share
        yield _batch_to_device(*windows.gather(np.arange(lo, lo + share)), device)
