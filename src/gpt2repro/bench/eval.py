"""`gpt2repro bench eval`: HellaSwag and CORE examples/s, batched against one example per forward pass.

The examples are synthetic (random common words, no network needed) but in the schema
of hellaswag_val.jsonl, written to a temporary file and read back with `load_examples`,
so the batched path is exactly what `gpt2repro eval --tasks hellaswag` runs: every batch
padded to the longest rendered row of the whole set. The baseline scores each example's
4 endings in one forward pass padded to that example's own longest row, with no batching
across examples. Both sides are timed end to end (tokenizing, forward, scoring), rounds
interleaved; examples/s are from each side's fastest round, the speedup is the median
of the rounds' ratios, because this kind of machine varies by 10-25% from run to run.

CORE is timed the same way on synthetic 3-shot tasks of its three types (`core_eval`
against nanochat's loop: each example's rows in one forward pass of their own).
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from gpt2repro.bench.common import hardware
from gpt2repro.distributed import DistInfo
from gpt2repro.evaluation.core import core_eval, is_correct, score_rows
from gpt2repro.evaluation.core import render as render_core
from gpt2repro.evaluation.core_bundle import CoreTask
from gpt2repro.evaluation.hellaswag import (
    ENDINGS,
    METRICS,
    _batch,
    ending_scores,
    hellaswag_eval,
    load_examples,
    predict,
    render,
)
from gpt2repro.loading import load_source
from gpt2repro.parallelize import resolve_dtype
from gpt2repro.runtime import resolve_device, seed_everything, sync
from gpt2repro.tokenizer import Tokenizer

WORDS = (
    "the a man woman child dog ball water car house road table chair door window kitchen "
    "garden river boat bike rope bar floor wall paint brush knife bowl cup hand arm leg "
    "head shirt hat camera crowd stage field court team player coach is are was then "
    "starts begins continues walks runs jumps holds pulls pushes lifts throws catches "
    "cuts mixes pours puts takes shows talks smiles looks turns sits stands moves and "
    "while with on in into onto over under behind next to of for from back down up "
    "around again slowly quickly carefully several other large small red blue green"
)
"""Common words that GPT-2's tokenizer keeps whole, so a word is about one token."""
KINDS = {
    # source: (context words, ending words, prefix), about the two halves of the real set:
    # short ActivityNet captions and longer WikiHow steps.
    "activitynet": ((8, 40), (4, 20), ""),
    "wikihow": ((25, 80), (10, 40), "[header] How to "),
}


def synthetic_examples(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` examples with every field of a hellaswag_val.jsonl line, alternating the two sources."""
    rng = random.Random(seed)
    vocab = WORDS.split()

    def words(lo_hi: tuple[int, int]) -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(*lo_hi)))

    out = []
    for i in range(n):
        source = "activitynet" if i % 2 == 0 else "wikihow"
        ctx_words, end_words, prefix = KINDS[source]
        ctx_a, ctx_b = prefix + words(ctx_words), words((1, 3))
        out.append(
            {
                "ind": i,
                "activity_label": words((1, 3)).title(),
                "ctx_a": ctx_a,
                "ctx_b": ctx_b,
                "ctx": f"{ctx_a} {ctx_b}",
                "split": "val",
                "split_type": "indomain" if rng.random() < 0.5 else "zeroshot",
                "label": rng.randrange(ENDINGS),
                "endings": [words(end_words) + "." for _ in range(ENDINGS)],
                "source_id": f"{source}~synthetic{i}",
            }
        )
    return out


def synthetic_core_tasks(n: int, seed: int = 0) -> list[CoreTask]:
    """`n` examples of each CORE task type, in the bundle's fields, 3-shot (fewer when `n` < 4),
    4 choices."""
    rng = random.Random(seed)
    vocab = WORDS.split()

    def words(lo: int, hi: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    mc = [{"query": words(10, 40), "choices": [words(1, 8) for _ in range(4)], "gold": rng.randrange(4)}
          for _ in range(n)]  # fmt: skip
    schema = [{"context_options": [words(5, 30) for _ in range(2)], "continuation": words(3, 10),
               "gold": rng.randrange(2)} for _ in range(n)]  # fmt: skip
    lm = [{"context": words(20, 60), "continuation": words(1, 3)} for _ in range(n)]
    where, shots = Path("synthetic"), min(3, n - 1)  # the shots are other examples
    return [
        CoreTask("synthetic_mc", "multiple_choice", shots, " ", 25.0, where, mc),
        CoreTask("synthetic_schema", "schema", shots, " ", 50.0, where, schema),
        CoreTask("synthetic_lm", "language_modeling", shots, " ", 0.0, where, lm),
    ]


@torch.no_grad()
def core_one_at_a_time(
    model: torch.nn.Module, tasks: list[CoreTask], tokenizer: Tokenizer, device: torch.device,
    dtype: str, max_len: int,
) -> list[int]:  # fmt: skip
    """Correct count per task, one forward pass per example, as nanochat's evaluate_example."""
    correct = [0] * len(tasks)
    for t, task in enumerate(tasks):
        for i in range(len(task.examples)):
            (r,) = render_core(tasks, [(t, i)], tokenizer, max_len)
            means, oks = score_rows(
                model, r.rows, r.starts, r.ends, tokenizer.eot_id, device, dtype, max_len
            )
            correct[t] += is_correct(r, means, oks)
    return correct


def bench_core(
    gpt: torch.nn.Module, tok: Tokenizer, device: torch.device, dtype: str, max_len: int,
    examples: int, batch_size: int, rounds: int, seed: int,
) -> dict[str, Any]:  # fmt: skip
    """CORE examples/s batched and one at a time on synthetic tasks, and the speedup."""
    tasks = synthetic_core_tasks(examples, seed)
    total = sum(len(t.examples) for t in tasks)
    dist = DistInfo()
    core_eval(gpt, tasks, tok, device, dtype, dist, batch_size, progress=False)  # warm-up
    seconds: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        batched = core_eval(gpt, tasks, tok, device, dtype, dist, batch_size, progress=False)
        sync(device)
        seconds["batched"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        single = core_one_at_a_time(gpt, tasks, tok, device, dtype, max_len)
        sync(device)
        seconds["one_at_a_time"].append(time.perf_counter() - t0)
    return {
        "examples": total,
        "batched_examples_per_s": total / min(seconds["batched"]),
        "one_at_a_time_examples_per_s": total / min(seconds["one_at_a_time"]),
        "speedup": statistics.median(
            a / b for a, b in zip(seconds["one_at_a_time"], seconds["batched"], strict=True)
        ),
        "same_correct": [s.correct for s in batched] == single,
        "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
    }


@torch.no_grad()
def one_at_a_time(
    model: torch.nn.Module,
    examples: list[dict[str, Any]],
    tokenizer: Tokenizer,
    device: torch.device,
    dtype: str,
    max_len: int,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per-example predictions (N,) under each metric, and labels (N,): one forward per example.

    Each forward holds one example's 4 endings, padded to its own longest row.
    """
    was_training = model.training
    model.eval()
    preds: dict[str, list[torch.Tensor]] = {name: [] for name in METRICS}
    labels = []
    for ex in examples:
        rendered = render(ex, tokenizer, max_len)
        length = max(len(row) for row in rendered.rows)
        tokens, mask, nbytes, label = _batch([rendered], length, tokenizer.eot_id, device)
        logprob, ntok = ending_scores(model, tokens, mask, dtype)  # (4,), (4,)
        picked = predict(logprob.view(1, ENDINGS), ntok.view(1, ENDINGS), nbytes)
        for name in METRICS:
            preds[name].append(picked[name])
        labels.append(label)
    model.train(was_training)
    return {name: torch.cat(p).cpu() for name, p in preds.items()}, torch.cat(labels).cpu()


def padded_tokens(
    examples: list[dict[str, Any]], tokenizer: Tokenizer, max_len: int, batch_size: int
) -> tuple[int, int]:
    """Tokens fed to the model by hellaswag_eval (dummies included) and by one_at_a_time."""
    lengths = [max(map(len, render(ex, tokenizer, max_len).rows)) for ex in examples]
    batches = -(-len(examples) // batch_size)  # ceil
    return batches * batch_size * ENDINGS * max(lengths), ENDINGS * sum(lengths)


def bench_eval(
    model: str = "init:mini",
    examples: int = 24,
    batch_size: int = 8,
    rounds: int = 2,
    device_name: str = "auto",
    dtype: str = "auto",
    seed: int = 0,
    work_dir: Path | None = None,
    core: bool = True,
) -> dict[str, Any]:
    """Examples/s batched and one at a time, and the speedup, as a JSON-able dict (asserts nothing);
    with `core`, the same for CORE (`examples` of each of its task types) under "core"."""
    if examples < 1 or batch_size < 1 or rounds < 1:
        raise ValueError(
            f"examples={examples}, batch_size={batch_size} and rounds={rounds} must each be "
            f"at least 1."
        )
    device = resolve_device(device_name)
    dtype = resolve_dtype(dtype, device)
    seed_everything(seed)
    loaded = load_source(model, device)
    gpt, tok = loaded.model.eval(), loaded.tokenizer
    max_len = gpt.config.block_size
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        path = Path(tmp) / "hellaswag_val.jsonl"
        lines = (json.dumps(ex) + "\n" for ex in synthetic_examples(examples, seed))
        path.write_text("".join(lines), encoding="utf-8")
        exs = load_examples(path)
    dist = DistInfo()
    # Warm-up (first-call allocations, kernel selection), not timed.
    hellaswag_eval(gpt, exs[:batch_size], tok, device, dtype, dist, batch_size, progress=False)
    one_at_a_time(gpt, exs[:1], tok, device, dtype, max_len)
    seconds: dict[str, list[float]] = {"batched": [], "one_at_a_time": []}
    for _ in range(rounds):
        sync(device)
        t0 = time.perf_counter()
        batched = hellaswag_eval(gpt, exs, tok, device, dtype, dist, batch_size, progress=False)
        sync(device)
        seconds["batched"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        preds, labels = one_at_a_time(gpt, exs, tok, device, dtype, max_len)
        sync(device)
        seconds["one_at_a_time"].append(time.perf_counter() - t0)
    correct = {name: int((preds[name] == labels).sum()) for name in METRICS}
    tokens_batched, tokens_single = padded_tokens(exs, tok, max_len, batch_size)
    core_result = (
        bench_core(gpt, tok, device, dtype, max_len, examples, batch_size, rounds, seed)
        if core
        else None
    )
    return {
        "bench": "eval",
        "date": date.today().isoformat(),
        "model": model,
        "params": gpt.num_params(),
        "device": str(device),
        "dtype": dtype,
        "examples": len(exs),
        "batch_size": batch_size,
        "rounds": rounds,
        "batched_examples_per_s": len(exs) / min(seconds["batched"]),
        "one_at_a_time_examples_per_s": len(exs) / min(seconds["one_at_a_time"]),
        # one-at-a-time seconds / batched seconds, within each round
        "speedup": statistics.median(
            a / b for a, b in zip(seconds["one_at_a_time"], seconds["batched"], strict=True)
        ),
        "tokens_batched": tokens_batched,
        "tokens_one_at_a_time": tokens_single,
        "same_metrics": all(round(batched[name] * len(exs)) == correct[name] for name in METRICS),
        "acc_norm": batched["acc_norm"],
        "seconds": {k: [round(x, 3) for x in v] for k, v in seconds.items()},
        "core": core_result,
        "hardware": {**hardware(), "cores": os.cpu_count()},
    }
