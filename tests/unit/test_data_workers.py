"""Tokenization workers stream with bounded look-ahead; the split rule is a stable hash."""

from __future__ import annotations

import itertools
import multiprocessing
import os
import signal
from collections.abc import Iterator

import numpy as np
import pytest

from gpt2repro.data.prepare import assign_split
from gpt2repro.data.sources import Document
from gpt2repro.data.workers import encode_documents, encode_stream
from gpt2repro.tokenizer import load_tokenizer


class Counting:
    """An endless document stream that counts how far it was read."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[Document]:
        for i in itertools.count():
            self.pulled += 1
            yield Document(f"k{i}", f"document number {i} " * 3)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_input_is_read_only_a_bounded_distance_ahead(workers: int) -> None:
    docs = Counting()
    stream = encode_stream(docs, "gpt2", np.dtype(np.uint16), workers, task_chars=100)
    tok = load_tokenizer("gpt2")
    for k, (metas, enc) in enumerate(itertools.islice(stream, 5)):
        assert [m.key for m in metas] == [f"k{2 * k}", f"k{2 * k + 1}"]  # in order, 2 per task
        assert metas[0].text == ""  # the text is not kept around
        assert enc.tokens[0] == tok.eot_id
        assert enc.tokens[: enc.lengths[0]].tolist() == [
            tok.eot_id,
            *tok.encode(f"document number {2 * k} " * 3),
        ]
    # 5 tasks consumed; at most 2 * workers + 2 more in flight (2 documents each).
    assert docs.pulled <= 2 * (5 + 2 * workers + 2) + 1
    stream.close()  # an abandoned stream shuts its pool down


def test_lone_surrogates_are_replaced_and_counted_as_utf8() -> None:
    tok = load_tokenizer("gpt2")
    enc = encode_documents(tok, ["a\ud800b", "é"], np.dtype(np.uint16))
    assert enc.nbytes.tolist() == [len("a\ufffdb".encode()), 2]
    assert tok.decode(enc.tokens[1 : enc.lengths[0]].tolist()) == "a\ufffdb"


def test_special_token_text_is_encoded_as_plain_text() -> None:
    tok = load_tokenizer("gpt2")
    enc = encode_documents(tok, ["<|endoftext|>"], np.dtype(np.uint16))
    assert enc.tokens.tolist() == [tok.eot_id, *tok.encode("<|endoftext|>")]
    assert tok.eot_id not in enc.tokens[1:].tolist()


def test_assign_split_is_a_stable_fraction() -> None:
    keys = [f"doc-{i}" for i in range(20_000)]
    val = sum(assign_split(k, 0.05) == "val" for k in keys)
    assert 800 < val < 1200
    assert [assign_split(k, 0.05) for k in keys[:50]] == [assign_split(k, 0.05) for k in keys[:50]]
    # A larger fraction only adds documents to val, it never moves one out.
    assert all(assign_split(k, 0.1) == "val" for k in keys if assign_split(k, 0.05) == "val")


def test_a_dead_worker_fails_the_stream_instead_of_hanging() -> None:
    before = set(multiprocessing.active_children())
    stream = encode_stream(Counting(), "gpt2", np.dtype(np.uint16), 2, task_chars=100)
    next(stream)
    workers = [p for p in multiprocessing.active_children() if p not in before]
    assert len(workers) == 2
    os.kill(workers[0].pid, signal.SIGKILL)  # as the kernel's out-of-memory killer would
    with pytest.raises(ChildProcessError, match="worker process died"):
        for _ in range(10_000):
            next(stream)
