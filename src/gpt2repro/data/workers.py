"""Tokenize a document stream in parallel worker processes, returning results in order.

Documents are grouped into tasks of about `TASK_CHARS` characters. With one worker the
tasks run in this process; with more, in a `spawn` process pool (safe even when the caller
has threads or CUDA). At most `2 * workers + 2` tasks are in flight, so memory stays flat
however large the corpus (`multiprocessing.Pool.imap` would read the whole input ahead).

Each document comes back as `[eot] + tokens(document)`, already in the shard dtype, with
its token count and its UTF-8 byte count.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import numpy as np

from gpt2repro import assets
from gpt2repro.data.sources import Document
from gpt2repro.tokenizer import GPT2Tokenizer, Tokenizer, load_tokenizer

# ~256K characters (~60K GPT-2 tokens, tens of milliseconds) per task: large enough that
# inter-process overhead is noise, small enough that two workers share a small corpus.
TASK_CHARS = 1 << 18


@dataclass
class Encoded:
    """The tokens of consecutive documents, each preceded by <|endoftext|>."""

    tokens: np.ndarray
    """all documents' tokens, concatenated"""
    lengths: np.ndarray
    """tokens per document, the separator included"""
    nbytes: np.ndarray
    """UTF-8 bytes per document"""


def _utf8_size(text: str) -> tuple[str, int]:
    """The text as it will be tokenized and its UTF-8 size."""
    try:
        return text, len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Lone surrogates (from JSON escapes such as "\ud800") have no UTF-8 form; like
        # tiktoken, replace them with U+FFFD so bytes and tokens describe the same text.
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text, len(text.encode("utf-8"))


def encode_documents(tok: Tokenizer, texts: list[str], dtype: np.dtype) -> Encoded:
    """Tokenize `texts` on this core only."""
    pieces: list[np.ndarray] = []
    lengths = np.empty(len(texts), dtype=np.int64)
    nbytes = np.empty(len(texts), dtype=np.int64)
    eot = np.array([tok.eot_id], dtype=dtype)
    for i, raw in enumerate(texts):
        text, nbytes[i] = _utf8_size(raw)
        if isinstance(tok, GPT2Tokenizer):
            # tiktoken's numpy path skips building a Python list of ints (~1.5x faster);
            # disallowed_special=() makes it treat "<|endoftext|>" in text as plain text,
            # exactly like encode_ordinary.
            ids = tok.encoding.encode_to_numpy(text, disallowed_special=())
        else:
            ids = np.asarray(tok.encode(text), dtype=np.int64)
        pieces.append(eot)
        pieces.append(ids.astype(dtype, copy=False))
        lengths[i] = len(ids) + 1
    tokens = np.concatenate(pieces) if pieces else np.empty(0, dtype=dtype)
    return Encoded(tokens, lengths, nbytes)


_worker_tokenizer: Tokenizer | None = None
_worker_dtype: np.dtype | None = None


def _exit_with_parent(parent: int) -> None:
    """End this worker once its parent is gone (reparented), e.g. after a SIGKILL."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _init_worker(spec: str, dtype: str, parent: int) -> None:
    global _worker_tokenizer, _worker_dtype
    # A killed parent closes nothing these workers wait on (each holds both ends of the
    # pool's queues), so without a watchdog they would wait forever as orphans.
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    # One core per worker: Hugging Face tokenizers would otherwise start a thread pool
    # in each process and oversubscribe the machine.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _worker_tokenizer = load_tokenizer(spec)
    _worker_dtype = np.dtype(dtype)
    _worker_tokenizer.encode("warm up")  # load the ranks before the first task's clock starts


def _encode_task(texts: list[str]) -> Encoded:
    assert _worker_tokenizer is not None and _worker_dtype is not None, "worker not initialised"
    return encode_documents(_worker_tokenizer, texts, _worker_dtype)


def _tasks(docs: Iterable[Document], chars: int) -> Iterator[tuple[list[Document], list[str]]]:
    """Group documents into tasks; the metadata keeps no text, so memory is one task's worth."""
    metas: list[Document] = []
    texts: list[str] = []
    size = 0
    for doc in docs:
        metas.append(doc._replace(text=""))
        texts.append(doc.text)
        size += len(doc.text)
        if size >= chars:
            yield metas, texts
            metas, texts, size = [], [], 0
    if metas:
        yield metas, texts


WORKER_DIED = (
    "A tokenizer worker process died (out of memory, or killed). Re-run the same command to "
    "resume from the last finished shard, with fewer --workers if memory is short."
)


def encode_stream(
    docs: Iterable[Document],
    tokenizer_spec: str,
    dtype: np.dtype,
    workers: int = 1,
    *,
    task_chars: int = TASK_CHARS,
) -> Iterator[tuple[list[Document], Encoded]]:
    """Yield (documents without their text, their encoding) task by task, in input order."""
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1.")
    tasks = _tasks(docs, task_chars)
    if workers == 1:
        tok = load_tokenizer(tokenizer_spec)
        for metas, texts in tasks:
            yield metas, encode_documents(tok, texts, dtype)
        return
    if tokenizer_spec == "gpt2":
        assets.fetch(assets.GPT2_RANKS)  # on a fresh machine: download once, not per worker
    # ProcessPoolExecutor, not multiprocessing.Pool: when a worker dies (out of memory,
    # killed), Pool silently replaces it and loses its task, so the caller waits forever;
    # the executor fails every pending task at once instead.
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(tokenizer_spec, np.dtype(dtype).str, os.getpid()),
    )
    try:
        yield from _in_order(pool, tasks, max_pending=2 * workers + 2)
    except BrokenProcessPool as e:
        raise ChildProcessError(WORKER_DIED) from e
    finally:
        # Normally nothing is left; after an error or an abandoned stream, drop queued work.
        pool.shutdown(wait=True, cancel_futures=True)


def _in_order(
    pool: ProcessPoolExecutor,
    tasks: Iterator[tuple[list[Document], list[str]]],
    max_pending: int,
) -> Iterator[tuple[list[Document], Encoded]]:
    """Results in submission order, with at most `max_pending` tasks submitted ahead."""
    pending: collections.deque[tuple[list[Document], Future[Encoded]]] = collections.deque()
    for metas, texts in tasks:
        pending.append((metas, pool.submit(_encode_task, texts)))
        del texts
        while len(pending) >= max_pending:
            head, future = pending.popleft()
            yield head, future.result()
    while pending:
        head, future = pending.popleft()
        yield head, future.result()
