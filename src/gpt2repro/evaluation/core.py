"""The DCLM CORE score, as nanochat computes it (`nanochat/core_eval.py`, `scripts/base_eval.py`).

22 few-shot tasks (core_bundle.py reads them). For each example, `num_fewshot` other
examples of the same task are drawn with `random.Random(1234 + idx)` and rendered in front
of it, each followed by a blank line. Then, by task type:

  multiple_choice    one row per choice, `query + delimiter + choice`; the scored tokens
                     are those after the rows' common token prefix;
  schema             one row per context option, `option + delimiter + continuation`; the
                     scored tokens are the rows' common token suffix;
  language_modeling  one row, `context.strip() + delimiter + continuation`; the scored
                     tokens are those after `(context.strip() + delimiter).strip()`.

Every row starts with `<|endoftext|>` (nanochat's BOS) and is cut from the left to the
model's context. Multiple choice and schema pick the row with the lowest mean loss over
its scored tokens; language modeling is right when the greedy prediction at every scored
token is that token. A task's accuracy is centred so that guessing scores 0,
`(acc - b) / (1 - b)` with b its random baseline, and CORE is the mean over the tasks.

Scoring is batched and KV-free: examples are rendered a chunk at a time, their rows sorted
by length and cut into forward passes of at most `4 * batch_size` rows (the rows of a
HellaSwag batch), padded on the right, which leaves every scored position's logits as they
are. Under torchrun, example k of the task-major list goes to rank k % world_size and the
correct counts are summed over ranks at the end, so ranks hold whole (unsharded) replicas.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gpt2repro.distributed import DistInfo, all_reduce_sum
from gpt2repro.evaluation.core_bundle import CoreTask
from gpt2repro.evaluation.report import task_entry
from gpt2repro.parallelize import autocast, context_length
from gpt2repro.plot import CORE_REFERENCES
from gpt2repro.tokenizer import Tokenizer

FEWSHOT_SEED = 1234  # nanochat core_eval.py: example idx draws its shots with Random(1234 + idx)
CHUNK = 256
"""Examples rendered (tokenized) at a time: rows sort by length within a chunk."""
LENGTH_STEP = 64
"""Batches pad to a multiple of this, so a compiled model sees few distinct shapes."""


def fewshot_indices(n: int, idx: int, k: int) -> list[int]:
    """The `k` shots of example `idx` among `n`: never itself, fixed by its index."""
    if k == 0:
        return []
    return random.Random(FEWSHOT_SEED + idx).sample([i for i in range(n) if i != idx], k)


def render_prompts(task: CoreTask, idx: int) -> list[str]:
    """The prompt texts of example `idx` of `task`: one per choice / context option; for
    language modeling the prompt without the continuation, then with it."""
    d = task.delimiter
    item = task.examples[idx]
    shots = [task.examples[i] for i in fewshot_indices(len(task.examples), idx, task.num_fewshot)]
    if task.task_type == "multiple_choice":
        head = "".join(f"{s['query']}{d}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{head}{item['query']}{d}{choice}" for choice in item["choices"]]
    if task.task_type == "schema":
        head = "".join(
            f"{s['context_options'][s['gold']]}{d}{s['continuation']}\n\n" for s in shots
        )
        return [f"{head}{option}{d}{item['continuation']}" for option in item["context_options"]]
    assert task.task_type == "language_modeling", task.task_type
    # The contexts are stripped (some end in whitespace), and so is the prompt without the
    # continuation: a trailing space would merge into the continuation's first token.
    head = "".join(f"{str(s['context']).strip()}{d}{s['continuation']}\n\n" for s in shots)
    prompt = f"{head}{str(item['context']).strip()}{d}"
    return [prompt.strip(), f"{prompt}{item['continuation']}"]


def common_length(rows: list[list[int]], from_end: bool = False) -> int:
    """Length of the token prefix (or suffix) that all `rows` share."""
    n = min(len(r) for r in rows)
    for i in range(n):
        pos = -1 - i if from_end else i
        if any(r[pos] != rows[0][pos] for r in rows):
            return i
    return n


@dataclass(frozen=True)
class Rendered:
    """One example as token rows, each with the span [start, end) of its scored tokens."""

    task: int
    """Index of the example's task in the list being evaluated."""
    rows: list[list[int]]
    starts: list[int]
    ends: list[int]
    gold: int
    """Index of the right row (multiple choice, schema); -1 for language modeling."""


def spans(task_type: str, rows: list[list[int]], where: str) -> tuple[list[list[int]], list[int]]:
    """The rows to score and where each one's scored tokens start (they run to its end);
    `where` names the example in errors."""
    if task_type == "multiple_choice":
        return rows, [common_length(rows)] * len(rows)
    if task_type == "schema":
        suffix = common_length(rows, from_end=True)
        return rows, [len(r) - suffix for r in rows]
    without, with_ = rows
    if not (len(without) < len(with_) and with_[: len(without)] == without):
        raise ValueError(
            f"CORE {where}: the tokens of the prompt without its continuation are not a "
            f"prefix of the tokens with it, so the continuation cannot be found (nanochat "
            f"stops on this too)."
        )
    return [with_], [len(without)]


def render(
    tasks: list[CoreTask], refs: list[tuple[int, int]], tokenizer: Tokenizer, max_len: int
) -> list[Rendered]:
    """Examples (task index, example index) as token rows cut from the left to `max_len`."""
    prompts = [render_prompts(tasks[t], i) for t, i in refs]
    flat = tokenizer.encode_batch([p for ps in prompts for p in ps])
    out, k = [], 0
    for (t, i), ps in zip(refs, prompts, strict=True):
        rows = [[tokenizer.eot_id, *ids] for ids in flat[k : k + len(ps)]]  # BOS first
        k += len(ps)
        task = tasks[t]
        rows, starts = spans(task.task_type, rows, f"task {task.label!r}, example {i}")
        ends = [len(r) for r in rows]
        crop = [max(0, len(r) - max_len) for r in rows]
        # A scored token needs the token before it; nanochat asserts this never lacks.
        starts = [max(1, s - c) for s, c in zip(starts, crop, strict=True)]
        ends = [e - c for e, c in zip(ends, crop, strict=True)]
        rows = [r[c:] for r, c in zip(rows, crop, strict=True)]
        gold = int(task.examples[i]["gold"]) if task.task_type != "language_modeling" else -1
        out.append(Rendered(t, rows, starts, ends, gold))
    return out


def score_rows(
    model: torch.nn.Module,
    rows: list[list[int]],
    starts: list[int],
    ends: list[int],
    pad_id: int,
    device: torch.device,
    dtype: str,
    max_len: int,
) -> tuple[list[float], list[bool]]:
    """Mean loss over each row's scored tokens (nan when it has none), and whether the greedy
    prediction is right at every one of them. One forward pass, rows padded on the right."""
    longest = max(len(r) for r in rows)
    length = min(max_len, -(-longest // LENGTH_STEP) * LENGTH_STEP)
    length = max(length, longest)
    tokens = torch.full((len(rows), length), pad_id, dtype=torch.long)  # (R, L)
    mask = torch.zeros((len(rows), length), dtype=torch.bool)  # (R, L): scored targets
    for i, (r, s, e) in enumerate(zip(rows, starts, ends, strict=True)):
        tokens[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, s:e] = True
    tokens, mask = tokens.to(device), mask.to(device)
    with autocast(device, dtype):
        logits = model(tokens)  # (R, L, V)
    scored = mask[:, 1:]  # (R, L-1): position t predicts token t+1
    picked = logits[:, :-1][scored].float()  # (S, V): only the scored positions, in fp32
    targets = tokens[:, 1:][scored]  # (S,)
    losses = torch.zeros(scored.shape, dtype=torch.float32, device=device)
    losses[scored] = F.cross_entropy(picked, targets, reduction="none")
    wrong = torch.zeros(scored.shape, dtype=torch.bool, device=device)
    wrong[scored] = picked.argmax(dim=-1) != targets
    count = scored.sum(dim=1)
    mean = (losses.sum(dim=1) / count).tolist()  # 0/0 = nan, as the mean of nothing
    return mean, (~wrong.any(dim=1)).tolist()


def is_correct(r: Rendered, mean_loss: list[float], greedy: list[bool]) -> bool:
    """nanochat's verdict: all greedy for language modeling, else the lowest mean loss (the
    first of equals; Python's `min` on the list, so a nan row behaves as there)."""
    if r.gold < 0:
        return greedy[0]
    return mean_loss.index(min(mean_loss)) == r.gold


def _batches(rendered: list[Rendered], rows_per_batch: int) -> list[list[tuple[int, int]]]:
    """(example, row) pairs cut into forward passes, longest rows first."""
    pairs = [(k, j) for k, r in enumerate(rendered) for j in range(len(r.rows))]
    pairs.sort(key=lambda p: -len(rendered[p[0]].rows[p[1]]))
    return [pairs[i : i + rows_per_batch] for i in range(0, len(pairs), rows_per_batch)]


@dataclass(frozen=True)
class TaskScore:
    label: str
    n: int
    correct: int
    random_baseline: float
    """In percent, as eval_meta_data.csv gives it."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.n

    @property
    def centered(self) -> float:
        return centered(self.accuracy, self.random_baseline)


def centered(accuracy: float, random_baseline: float) -> float:
    """Accuracy rescaled so that guessing (`random_baseline` percent) is 0 and perfect is 1."""
    b = 0.01 * random_baseline
    return (accuracy - b) / (1.0 - b)


def core_score(scores: list[TaskScore]) -> float:
    """CORE: the mean of the tasks' centred accuracies."""
    return sum(s.centered for s in scores) / len(scores)


@torch.no_grad()
def core_eval(
    model: torch.nn.Module,
    tasks: list[CoreTask],
    tokenizer: Tokenizer,
    device: torch.device,
    dtype: str,
    dist: DistInfo,
    batch_size: int = 8,
    progress: bool = True,
) -> list[TaskScore]:
    """Each task's correct count over its examples, all ranks together (every rank must call
    it with the same tasks). Works on a compiled or DDP-wrapped model."""
    if batch_size < 1 or not tasks:
        raise ValueError(f"Need tasks and batch_size >= 1 (got {len(tasks)}, {batch_size}).")
    max_len = context_length(model)
    refs = [(t, i) for t, task in enumerate(tasks) for i in range(len(task.examples))]
    mine = refs[dist.rank :: dist.world_size]
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(tasks), dtype=torch.float64, device=device)
    bar = tqdm(total=len(refs), desc="core", disable=not (progress and dist.is_main), leave=False)
    for c in range(0, len(mine), CHUNK):
        rendered = render(tasks, mine[c : c + CHUNK], tokenizer, max_len)
        loss: list[list[float]] = [[math.nan] * len(r.rows) for r in rendered]
        greedy: list[list[bool]] = [[False] * len(r.rows) for r in rendered]
        for batch in _batches(rendered, 4 * batch_size):
            rows = [rendered[k].rows[j] for k, j in batch]
            starts = [rendered[k].starts[j] for k, j in batch]
            ends = [rendered[k].ends[j] for k, j in batch]
            means, oks = score_rows(
                model, rows, starts, ends, tokenizer.eot_id, device, dtype, max_len
            )
            for (k, j), m, ok in zip(batch, means, oks, strict=True):
                loss[k][j], greedy[k][j] = m, ok
        for r, row_loss, row_greedy in zip(rendered, loss, greedy, strict=True):
            correct[r.task] += float(is_correct(r, row_loss, row_greedy))
        bar.update(len(rendered) * dist.world_size)
    bar.close()
    model.train(was_training)
    correct = all_reduce_sum(correct, dist)
    return [
        TaskScore(t.label, len(t.examples), round(correct[k].item()), t.random_baseline)
        for k, t in enumerate(tasks)
    ]


def format_core(scores: list[TaskScore]) -> str:
    """CORE beside OpenAI GPT-2's published figures (the tasks are in the results table)."""
    rows = [("this model", core_score(scores))] + [(r.label, r.value) for r in CORE_REFERENCES]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'CORE (' + str(len(scores)) + ' tasks)':<{width}}  value", "-" * width + "  ------"]
    return "\n".join(lines + [f"{name:<{width}}  {value:.4f}" for name, value in rows])


def core_entries(
    scores: list[TaskScore], tasks: list[CoreTask], complete: bool, limit: int | None
) -> dict[str, dict[str, Any]]:
    """`core:LABEL` entries of the results file, and `core` (the mean) when `complete`."""
    entries = {}
    for s, t in zip(scores, tasks, strict=True):
        p = s.accuracy
        # Sample standard error of a mean of 0/1 outcomes (as HellaSwag's); centring scales it.
        err = math.sqrt(p * (1 - p) / (s.n - 1)) if s.n > 1 else math.nan
        info = {"task_type": t.task_type, "num_fewshot": t.num_fewshot,
                "random_baseline": t.random_baseline, "limit": limit}  # fmt: skip
        entries[f"core:{s.label}"] = task_entry(
            {"acc": p, "centered": s.centered},
            {"acc": err, "centered": err / (1 - 0.01 * t.random_baseline)},
            s.n,
            info,
        )
    if complete:
        # Comparable with the published figures only without --limit.
        info = {"tasks": len(scores), "limit": limit,
                "gpt2": {r.label: r.value for r in CORE_REFERENCES}}  # fmt: skip
        entries["core"] = task_entry(
            {"core": core_score(scores)}, None, sum(s.n for s in scores), info
        )
    return entries
