"""TokenLoader and eval_batches on synthetic shards whose token values are their global positions.

With token = position, the first token of a window identifies it, so coverage, overlap
and order can be checked exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gpt2repro.data.loader import TokenLoader, eval_batches, read_manifest
from gpt2repro.data.manifest import write_json_atomic
from gpt2repro.data.shards import HEADER_SIZE, shard_name, write_shard

VOCAB = 1 << 20  # positions up to a million, so tokens are uint32


def make_dataset(root: Path, lengths: dict[str, list[int]], tokenizer: str = "synthetic") -> Path:
    """Shards of the given lengths per split, token value = position in the split, plus a manifest."""
    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, sizes in lengths.items():
        shards, start = [], 0
        for i, n in enumerate(sizes):
            name = shard_name(split, i)
            h = write_shard(
                root / name,
                np.arange(start, start + n),
                vocab_size=VOCAB,
                eot_id=0,
                tokenizer=tokenizer,
            )
            shards.append({"file": name, "tokens": n, "crc32": h.crc32})
            start += n
        splits[split] = {"documents": 1, "tokens": start, "bytes": start, "shards": shards}
    manifest = {
        "format": "gpt2repro-dataset",
        "format_version": 1,
        "name": root.name,
        "tokenizer": {"identifier": tokenizer, "spec": tokenizer, "vocab_size": VOCAB, "eot_id": 0},
        "vocab_size": VOCAB,
        "dtype": "uint32",
        "splits": splits,
    }
    write_json_atomic(root / "manifest.json", manifest)
    return root


# Three shards of unequal length; T = 8 gives (n - 1) // 8 windows each: 12 + 5 + 24 = 41.
SHARDS = [100, 47, 200]
T = 8


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_dataset(tmp_path / "synthetic", {"train": SHARDS, "val": [81, 40]})


def all_windows() -> set[int]:
    """First token of every window of SHARDS."""
    starts, offset = set(), 0
    for n in SHARDS:
        starts |= {offset + i * T for i in range((n - 1) // T)}
        offset += n
    return starts


def epoch_windows(loader: TokenLoader) -> list[int]:
    """First tokens of the windows of one epoch of `loader`, in order."""
    out: list[int] = []
    for _ in range(loader.batches_per_epoch):
        x, _ = loader.next_batch()
        out += x[:, 0].tolist()
    return out


def test_batches_are_windows_and_their_shift(data: Path) -> None:
    with TokenLoader(data, "train", batch_size=4, seq_len=T, prefetch=0) as loader:
        x, y = loader.next_batch()
    assert x.shape == y.shape == (4, T) and x.dtype == y.dtype == torch.int64
    # Positions are consecutive inside a window: no window crosses a shard boundary.
    torch.testing.assert_close(y, x + 1)
    torch.testing.assert_close(x, x[:, :1] + torch.arange(T))
    assert set(x[:, 0].tolist()) <= all_windows()


def test_an_epoch_draws_every_window_once_across_all_shards(data: Path) -> None:
    with TokenLoader(data, "train", batch_size=4, seq_len=T, seed=3) as loader:
        seen = epoch_windows(loader)
        assert loader.epoch == 1
    assert len(seen) == len(set(seen)) == (41 // 4) * 4
    assert set(seen) <= all_windows()
    # Shuffled across shards: the first batches already mix the three shards.
    shard_of = np.searchsorted(np.cumsum(SHARDS), seen[:12], side="right")
    assert len(set(shard_of.tolist())) == 3


def test_ranks_are_disjoint_and_cover_the_epoch(data: Path) -> None:
    W, B = 3, 2
    per_rank = []
    for rank in range(W):
        with TokenLoader(data, "train", B, T, rank=rank, world_size=W, seed=5) as loader:
            assert loader.batches_per_epoch == 41 // (B * W)
            per_rank.append(epoch_windows(loader))
    union = set().union(*map(set, per_rank))
    assert sum(map(len, per_rank)) == len(union) == (41 // (B * W)) * B * W  # disjoint
    # Together they are exactly the epoch a single process would see, in global-batch order.
    with TokenLoader(data, "train", B * W, T, seed=5, prefetch=0) as single:
        assert epoch_windows(single)[: len(union)] == [
            w
            for k in range(len(per_rank[0]) // B)
            for r in range(W)
            for w in per_rank[r][k * B : (k + 1) * B]
        ]


def test_epoch_two_differs_from_epoch_one(data: Path) -> None:
    with TokenLoader(data, "train", batch_size=4, seq_len=T, seed=0) as loader:
        first, second = epoch_windows(loader), epoch_windows(loader)
    assert first != second
    for epoch in (first, second):
        assert len(epoch) == len(set(epoch)) == 40 and set(epoch) <= all_windows()


def test_the_seed_changes_the_order(data: Path) -> None:
    orders = []
    for seed in (0, 1):
        with TokenLoader(data, "train", batch_size=4, seq_len=T, seed=seed) as loader:
            orders.append(epoch_windows(loader))
    assert orders[0] != orders[1]


@pytest.mark.parametrize("prefetch", [0, 1, 3])
# 10 batches per epoch: from the start, mid-epoch, at and past the epoch boundary.
@pytest.mark.parametrize("consumed", [0, 7, 10, 23])
def test_resume_gives_the_identical_batch_sequence(
    data: Path, prefetch: int, consumed: int
) -> None:
    with TokenLoader(data, "train", 4, T, seed=11, prefetch=prefetch) as run:
        for _ in range(consumed):
            run.next_batch()
        state = json.loads(json.dumps(run.state_dict()))  # as a checkpoint stores it
        expected = [run.next_batch() for _ in range(12)]
    assert all(isinstance(v, int) for v in state.values())
    with TokenLoader(data, "train", 4, T, seed=999, prefetch=prefetch) as resumed:
        resumed.next_batch()  # a fresh run that already prefetched and consumed something
        resumed.load_state_dict(state)
        assert resumed.epoch == state["epoch"]
        got = [resumed.next_batch() for _ in range(12)]
    for (ex, ey), (gx, gy) in zip(expected, got, strict=True):
        torch.testing.assert_close(gx, ex)
        torch.testing.assert_close(gy, ey)


def test_prefetch_does_not_change_the_sequence(data: Path) -> None:
    sequences = []
    for prefetch in (0, 4):
        with TokenLoader(data, "train", 3, T, seed=2, prefetch=prefetch) as loader:
            sequences.append(torch.cat([loader.next_batch()[0] for _ in range(30)]))
    torch.testing.assert_close(sequences[0], sequences[1])


def test_close_stops_the_prefetch_thread(data: Path) -> None:
    loader = TokenLoader(data, "train", 2, T, prefetch=2)
    thread = loader._thread
    assert thread is not None and thread.is_alive()
    loader.close()
    assert not thread.is_alive()
    x, _ = loader.next_batch()  # still usable, synchronously
    assert x.shape == (2, T)


def test_state_from_another_dataset_or_length_is_refused(data: Path) -> None:
    with TokenLoader(data, "train", 4, T) as loader:
        state = loader.state_dict()
    with (
        TokenLoader(data, "train", 4, T // 2) as other,
        pytest.raises(ValueError, match=f"seq_len {T} -> {T // 2}"),
    ):
        other.load_state_dict(state)
    with TokenLoader(data, "train", 4, T) as other, pytest.raises(ValueError, match="lacks epoch"):
        other.load_state_dict({"batch": 0})
    with TokenLoader(data, "train", 4, T) as other, pytest.raises(ValueError, match="out of range"):
        other.load_state_dict(state | {"batch": 10})  # 41 windows: batches 0-9 of 4


def global_order(
    data: Path, batch_size: int, world_size: int, rounds: int, state: dict[str, int] | None = None
) -> tuple[list[int], dict[str, int], list[str | None]]:
    """First tokens of the windows the ranks of one setup take in `rounds` global rounds,
    rank 0's batch first; with `state`, after every rank resumed from it. Also the notes."""
    firsts: list[int] = []
    loaders = [
        TokenLoader(data, "train", batch_size, T, rank=r, world_size=world_size, seed=5)
        for r in range(world_size)
    ]
    notes = [loader.load_state_dict(state) for loader in loaders] if state else []
    for _ in range(rounds):
        for loader in loaders:
            firsts += loader.next_batch()[0][:, 0].tolist()
    states = [loader.state_dict() for loader in loaders]
    for loader in loaders:
        loader.close()
    assert all(st == states[0] | {"batch": st["batch"]} for st in states)
    return firsts, states[0], notes


@pytest.mark.parametrize(
    ("before", "after"), [((2, 2), (4, 1)), ((4, 1), (1, 2)), ((1, 4), (2, 2))]
)
def test_another_world_size_or_micro_batch_goes_on_with_the_same_windows(
    data: Path, before: tuple[int, int], after: tuple[int, int]
) -> None:
    """The resumed setup continues the global order from the window the other one reached,
    across epoch ends too (each epoch uses the same 40 of its 41 windows either way)."""
    per_before, per_after = before[0] * before[1], after[0] * after[1]
    straight, _, _ = global_order(data, *before, rounds=88 // per_before)  # into epoch 2
    done, state, _ = global_order(data, *before, rounds=12 // per_before)
    rest, _, notes = global_order(data, *after, rounds=76 // per_after, state=state)
    assert done + rest == straight
    assert notes[0] == notes[-1] and f"-> {after[0]} x {after[1]}" in notes[0]
    assert "skipped" not in notes[0]
    _, _, same = global_order(data, *before, rounds=1, state=state)
    assert same == [None] * before[1]  # the same setup: nothing to say


def test_a_round_that_does_not_divide_skips_less_than_one_round(data: Path) -> None:
    straight, _, _ = global_order(data, 3, 1, rounds=26)  # 13 rounds of 3 an epoch: 39 of 41
    _, state, _ = global_order(data, 3, 1, rounds=2)  # 6 windows consumed
    rest, after, (note,) = global_order(data, 4, 1, rounds=8, state=state)
    assert "epoch 0 goes on from window 8 of its order (2 skipped" in note
    assert "each epoch's last 3 of its 39 windows go unused" in note
    assert rest[:28] == straight[8:36]  # rounds 2-8 of 4 end at window 36 of the 39 ...
    assert rest[28:] == straight[39:43]  # ... and epoch 1 starts anew
    assert after["epoch_windows"] == 39  # kept for the next resume
    _, state, _ = global_order(data, 1, 1, rounds=39)  # 39 of 41: no full round of 4 left
    _, after, (note,) = global_order(data, 4, 1, rounds=0, state=state)
    assert (after["epoch"], after["batch"]) == (1, 0)
    assert "epoch 1 goes on from window 0 of its order (2 skipped" in note


def test_bad_arguments_and_too_small_splits(data: Path) -> None:
    with pytest.raises(ValueError, match=r"batch_size=0 .*rank=2 must be in \[0, world_size=2\)"):
        TokenLoader(data, "train", 0, T, rank=2, world_size=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        TokenLoader(data, "val", 64, T)
    with pytest.raises(ValueError, match="no split 'test'"):
        TokenLoader(data, "test", 1, T)


def test_missing_dataset_names_the_manifest_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"manifest\.json: no such file.*gpt2repro prepare"):
        TokenLoader(tmp_path / "nothing", "train", 1, T)


def test_a_shard_from_another_tokenizer_is_refused(data: Path, tmp_path: Path) -> None:
    other = make_dataset(tmp_path / "other", {"train": [100]}, tokenizer="bpe-0123")
    (data / "train_000000.bin").write_bytes((other / "train_000000.bin").read_bytes())
    with pytest.raises(ValueError, match=r"train_000000\.bin: written by tokenizer 'bpe-0123'"):
        TokenLoader(data, "train", 1, T)


def corrupt_token(shard: Path, position: int, value: int) -> None:
    """Overwrite one uint32 token in place, header untouched (as a bit flip on disk would)."""
    raw = bytearray(shard.read_bytes())
    offset = HEADER_SIZE + 4 * position
    raw[offset : offset + 4] = value.to_bytes(4, "little")
    shard.write_bytes(bytes(raw))


@pytest.mark.parametrize("prefetch", [0, 2])
def test_a_token_outside_the_vocabulary_names_the_shard(data: Path, prefetch: int) -> None:
    corrupt_token(data / "train_000001.bin", 20, VOCAB)  # the header still reads as valid
    message = (
        r"train_000001\.bin: token 1048576 is not below the vocabulary size 1048576.*"
        rf"gpt2repro data verify {data}"
    )
    with (
        TokenLoader(data, "train", 4, T, prefetch=prefetch) as loader,
        pytest.raises(ValueError, match=message),
    ):
        epoch_windows(loader)  # the corrupt windows are drawn somewhere in the epoch


def test_eval_batches_refuse_a_token_outside_the_vocabulary(data: Path) -> None:
    corrupt_token(data / "val_000000.bin", 3 * T, VOCAB + 5)  # the last target of window 2
    with pytest.raises(ValueError, match=r"val_000000\.bin: token 1048581 .*data verify"):
        list(eval_batches(data, "val", 4, T, None))


def test_a_shard_header_with_another_vocabulary_is_refused(data: Path) -> None:
    tokens = np.arange(100, 147)
    write_shard(
        data / "train_000001.bin", tokens, vocab_size=VOCAB + 1, eot_id=0, tokenizer="synthetic"
    )
    with pytest.raises(ValueError, match=r"train_000001\.bin: .*1048577 tokens.*1048576"):
        TokenLoader(data, "train", 1, T)


def test_read_manifest_returns_the_counts(data: Path) -> None:
    manifest = read_manifest(data)
    assert manifest["splits"]["val"]["tokens"] == 121
    assert manifest["tokenizer"]["vocab_size"] == VOCAB


def test_eval_batches_are_in_order_and_split_across_ranks(data: Path) -> None:
    # val: shards of 81 and 40 tokens -> 10 + 4 = 14 windows of T + 1.
    val_windows = [i * T for i in range(10)] + [81 + i * T for i in range(4)]
    single = [x for x, _ in eval_batches(data, "val", 4, T, None)]
    assert [b.shape[0] for b in single] == [4, 4, 4, 2]  # the remainder as a smaller batch
    assert torch.cat(single)[:, 0].tolist() == val_windows
    per_rank = [list(eval_batches(data, "val", 2, T, None, rank=r, world_size=3)) for r in range(3)]
    assert len({len(b) for b in per_rank}) == 1  # same number of batches on every rank
    for k in range(len(per_rank[0])):
        assert len({b[k][0].shape for b in per_rank}) == 1  # and the same shapes
    firsts = sorted(v for b in per_rank for x, _ in b for v in x[:, 0].tolist())
    assert firsts == val_windows[:12]  # 14 windows over 3 ranks: 12 used, disjoint
    for batches in per_rank:
        for x, y in batches:
            torch.testing.assert_close(y, x + 1)


def test_eval_batches_respect_max_tokens(data: Path) -> None:
    batches = list(eval_batches(data, "val", 4, T, max_tokens=5 * T + 3, rank=0, world_size=1))
    assert sum(y.numel() for _, y in batches) == 5 * T
    both = [list(eval_batches(data, "val", 4, T, 5 * T, rank=r, world_size=2)) for r in range(2)]
    assert sum(y.numel() for b in both for _, y in b) <= 5 * T
    with pytest.raises(ValueError, match="fewer than the 2 rank"):
        eval_batches(data, "val", 4, T, max_tokens=T, world_size=2)
