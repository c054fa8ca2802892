"""HellaSwag, completion style: the scorer llm.c and "Let's reproduce GPT-2 (124M)" report.

Each example is a context and four endings. Every ending is appended to the context
(`ctx` tokens, then the tokens of " " + ending) and the model is scored on the ending
tokens only. Three predictions per example:

  acc        the ending with the highest total log-probability;
  acc_norm   the ending with the lowest mean per-token loss (llm.c's figure: OpenAI's
             GPT-2 124M scores 0.2955 on the 10,042 validation examples, and 0.2859 acc);
  acc_bytes  the highest log-probability per UTF-8 byte of the ending, the byte-length
             normalisation of lm-evaluation-harness (its `acc_bytes`; on ASCII text the
             same as its character-normalised `acc_norm`).

lm-evaluation-harness's own `hellaswag` task differs in the prompt (activity label and
WikiHow clean-up), so its numbers are not these.

Batches have one fixed shape (examples x 4 endings, padded to the longest rendered row
of the whole set), so a compiled model compiles once. Examples are dealt to ranks
round-robin; every rank runs the same number of batches (short ones are padded with
dummy rows that count for nothing), so collective operations inside the model stay in
step, and the counts are summed over ranks at the end.
"""

from __future__ import annotations

import json
import math
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from gpt2repro.assets import cache_dir
from gpt2repro.distributed import DistInfo, all_reduce_mean
from gpt2repro.parallelize import autocast, context_length
from gpt2repro.tokenizer import Tokenizer

HELLASWAG_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_EXAMPLES = 10_042
"""Examples in hellaswag_val.jsonl; the reference numbers are over all of them."""
ENDINGS = 4
METRICS = ("acc", "acc_norm", "acc_bytes")


def cached_path() -> Path:
    return cache_dir() / "hellaswag" / "hellaswag_val.jsonl"


def fetch_hellaswag(path: Path | str | None = None, timeout: float = 10.0) -> Path:
    """The validation file: `path` if given, else the cached copy, else downloaded and cached."""
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such HellaSwag file. Pass the path of hellaswag_val.jsonl "
                f"(from {HELLASWAG_URL})."
            )
        return path
    target = cached_path()
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with urllib.request.urlopen(HELLASWAG_URL, timeout=timeout) as response:
            tmp.write_bytes(response.read())
        os.replace(tmp, target)  # atomic: a killed download never leaves a partial file
    except (urllib.error.URLError, OSError) as e:
        tmp.unlink(missing_ok=True)
        raise ConnectionError(
            f"Could not download HellaSwag from {HELLASWAG_URL} ({e}). On a machine with "
            f"internet access, download hellaswag_val.jsonl and pass its local path "
            f"(--hellaswag-path PATH), or copy it to {target}."
        ) from e
    return target


def load_examples(path: Path | str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Parsed, validated examples of the validation file (the first `limit` of them)."""
    file = fetch_hellaswag(path)
    examples = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            ex = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}:{lineno}: not JSON ({e}). Re-download the file.") from e
        if not _is_example(ex):
            raise ValueError(
                f"{file}:{lineno}: not a HellaSwag example (needs ctx, 4 endings and a label "
                f"0-3). Pass hellaswag_val.jsonl from {HELLASWAG_URL}."
            )
        examples.append(ex)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise ValueError(f"{file}: no examples.")
    return examples


def _is_example(ex: Any) -> bool:
    if not isinstance(ex, dict) or not isinstance(ex.get("ctx"), str):
        return False
    endings = ex.get("endings")
    return (
        isinstance(endings, list)
        and len(endings) == ENDINGS
        and all(isinstance(e, str) for e in endings)
        and ex.get("label") in range(ENDINGS)
    )


@dataclass(frozen=True)
class Rendered:
    """One example as four token rows, with a mask over the ending tokens."""

    rows: list[list[int]]
    """Context + ending tokens, cut from the left to the model's context."""
    masks: list[list[int]]
    """1 where the token belongs to the ending (and is scored), else 0."""
    nbytes: list[int]
    """UTF-8 bytes of each ending."""
    label: int


def render(example: dict[str, Any], tokenizer: Tokenizer, max_len: int) -> Rendered:
    """Tokens of context + " " + ending for each ending, as llm.c renders them."""
    ctx = tokenizer.encode(example["ctx"])
    rows, masks = [], []
    for ending in example["endings"]:
        end = tokenizer.encode(" " + ending)  # GPT-2's BPE puts the space in front of a word
        rows.append((ctx + end)[-max_len:])
        masks.append(([0] * len(ctx) + [1] * len(end))[-max_len:])
    nbytes = [len(e.encode("utf-8")) for e in example["endings"]]
    return Rendered(rows, masks, nbytes, int(example["label"]))


def ending_scores(
    model: torch.nn.Module, tokens: torch.Tensor, mask: torch.Tensor, dtype: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Total log-probability and token count of the masked tokens of each row (R, T)."""
    with autocast(tokens.device, dtype):
        logits = model(tokens)  # (R, T, V)
    scored = mask[:, 1:].bool()  # (R, T-1): position t predicts token t+1
    # Only the endings' positions go through the fp32 cross-entropy: a few of each row's
    # T, and an (R x T, V) fp32 copy would be the largest tensor of the evaluation.
    losses = torch.zeros(scored.shape, dtype=torch.float32, device=tokens.device)
    losses[scored] = F.cross_entropy(
        logits[:, :-1][scored].float(), tokens[:, 1:][scored], reduction="none"
    )
    return -losses.sum(dim=1), scored.sum(dim=1).float()


def predict(
    logprob: torch.Tensor, ntok: torch.Tensor, nbytes: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Predicted ending per example under each metric, from (N, 4) scores."""
    return {
        "acc": logprob.argmax(dim=1),
        "acc_norm": (logprob / ntok).argmax(dim=1),  # lowest mean loss
        "acc_bytes": (logprob / nbytes).argmax(dim=1),
    }


def _batch(
    rendered: list[Rendered], length: int, pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows = [r + [pad_id] * (length - len(r)) for ex in rendered for r in ex.rows]
    masks = [m + [0] * (length - len(m)) for ex in rendered for m in ex.masks]
    tokens = torch.tensor(rows, dtype=torch.long, device=device)  # (B*4, L)
    mask = torch.tensor(masks, dtype=torch.long, device=device)  # (B*4, L)
    nbytes = torch.tensor([ex.nbytes for ex in rendered], dtype=torch.float32, device=device)
    labels = torch.tensor([ex.label for ex in rendered], dtype=torch.long, device=device)
    return tokens, mask, nbytes, labels


@torch.no_grad()
def hellaswag_eval(
    model: torch.nn.Module,
    examples: list[dict[str, Any]],
    tokenizer: Tokenizer,
    device: torch.device,
    dtype: str,
    dist: DistInfo,
    batch_size: int = 8,
    progress: bool = True,
) -> dict[str, float]:
    """acc, acc_norm and acc_bytes (with standard errors) over `examples`, all ranks together.

    `batch_size` counts examples (each is 4 rows). Works on a compiled or DDP-wrapped
    model; every rank must call it with the same examples.
    """
    if batch_size < 1 or not examples:
        raise ValueError(f"Need examples and batch_size >= 1 (got {len(examples)}, {batch_size}).")
    max_len = context_length(model)
    rendered = [render(ex, tokenizer, max_len) for ex in examples]
    length = max(len(r) for ex in rendered for r in ex.rows)  # one shape for every batch
    mine = rendered[dist.rank :: dist.world_size]
    per_rank = math.ceil(len(rendered) / dist.world_size)
    n_batches = math.ceil(per_rank / batch_size)
    was_training = model.training
    model.eval()
    counts = torch.zeros(1 + len(METRICS), dtype=torch.float64, device=device)  # n, correct...
    bar = tqdm(
        range(n_batches), desc="hellaswag", disable=not (progress and dist.is_main), leave=False
    )
    for b in bar:
        chunk = mine[b * batch_size : (b + 1) * batch_size]
        real = len(chunk)
        chunk = chunk + [rendered[0]] * (batch_size - real)  # dummies keep the shape fixed
        tokens, mask, nbytes, labels = _batch(chunk, length, tokenizer.eot_id, device)
        logprob, ntok = ending_scores(model, tokens, mask, dtype)
        preds = predict(logprob.view(-1, ENDINGS), ntok.view(-1, ENDINGS), nbytes)
        counts[0] += real
        for i, name in enumerate(METRICS, start=1):
            counts[i] += (preds[name][:real] == labels[:real]).sum()
    model.train(was_training)
    counts = all_reduce_mean(counts, dist) * dist.world_size
    n = round(counts[0].item())
    result: dict[str, float] = {"n": n}
    for i, name in enumerate(METRICS, start=1):
        p = counts[i].item() / n
        result[name] = p
        # Sample standard error of a mean of 0/1 outcomes, as lm-evaluation-harness reports.
        result[f"{name}_stderr"] = math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else float("nan")
    return result
