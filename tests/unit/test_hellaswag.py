"""HellaSwag scoring: batched == one example at a time, a model that knows the answer, sharding, download."""

from __future__ import annotations

import io
import json
import math
import statistics
import urllib.error
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpt2repro.distributed import DistInfo
from gpt2repro.evaluation import hellaswag
from gpt2repro.evaluation.hellaswag import (
    _batch,
    ending_scores,
    hellaswag_eval,
    load_examples,
    render,
)
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import GPT2Tokenizer

# Lines in the format of hellaswag_val.jsonl (rowanz/hellaswag), one of each source.
LINES = [
    {
        "ind": 24,
        "activity_label": "Roof shingle removal",
        "ctx_a": "A man is sitting on a roof.",
        "ctx_b": "he",
        "ctx": "A man is sitting on a roof. he",
        "split": "val",
        "split_type": "indomain",
        "label": 3,
        "endings": [
            "is using wrap to wrap a pair of skis.",
            "is ripping level tiles off.",
            "is holding a rubik's cube.",
            "starts pulling up roofing on a roof.",
        ],
        "source_id": "activitynet~v_-JhWjGDPHMY",
    },
    {
        "ind": 92,
        "activity_label": "Clean and jerk",
        "ctx_a": "A lady walks to a barbell. She bends down and grabs the pole.",
        "ctx_b": "the lady",
        "ctx": "A lady walks to a barbell. She bends down and grabs the pole. the lady",
        "split": "val",
        "split_type": "zeroshot",
        "label": 3,
        "endings": [
            "swings and lands in her arms.",
            "pulls the barbell forward.",
            "pulls a rope attached to the barbell.",
            "stands and lifts the weight over her head.",
        ],
        "source_id": "activitynet~v_-lJS58hyo1c",
    },
    {
        "ind": 106,
        "activity_label": "Canoeing",
        "ctx_a": "Two women in a child are shown in a canoe while a man pulls the canoe while "
        "standing in the water, with other individuals visible in the background.",
        "ctx_b": "the child and a different man",
        "ctx": "Two women in a child are shown in a canoe while a man pulls the canoe while "
        "standing in the water, with other individuals visible in the background. the child "
        "and a different man",
        "split": "val",
        "split_type": "indomain",
        "label": 2,
        "endings": [
            "are then shown paddling down a river in a boat while a woman talks.",
            "are driving the canoe, they go down the river flowing side to side.",
            "sit in a canoe while the man paddles.",
            "walking go down the rapids, while the man in his helicopter almost falls and "
            "goes out of canoehood.",
        ],
        "source_id": "activitynet~v_-xQvJmC2jhk",
    },
    {
        "ind": 4165,
        "activity_label": "Personal Care and Style",
        "ctx_a": "[header] How to increase breast size with a bra [title] Check your bra size. "
        "[step] Wearing a bra that is too big will not make your breasts look larger.",
        "ctx_b": "",
        "ctx": "[header] How to increase breast size with a bra [title] Check your bra size. "
        "[step] Wearing a bra that is too big will not make your breasts look larger.",
        "split": "val",
        "split_type": "indomain",
        "label": 1,
        "endings": [
            "That is why it is important to wear the right size bra. [substeps] Try "
            "measuring yourself at home.",
            "Take a measuring tape and measure around your back, under your breasts. "
            "[substeps] Add 5 inches to the measurement.",
            "Bras that are too big will cause your cleavage to look less full.",
            "[title] Find a bra that fits snugly. [step] A bra is a piece of clothing.",
        ],
        "source_id": "wikihow~7247",
    },
    {
        "ind": 7020,
        "activity_label": "Food and Entertaining",
        "ctx_a": "[header] How to make café au lait [title] Brew strong coffee.",
        "ctx_b": "",
        "ctx": "[header] How to make café au lait [title] Brew strong coffee.",
        "split": "val",
        "split_type": "zeroshot",
        "label": 0,
        "endings": [
            "[step] Use a French press or a drip brewer and dark-roast beans.",
            "[step] Drink it cold with ice cubes — it's délicieux.",
            "[title] Serve the milk in a bowl.",
            "[step] Fill the sink with warm water.",
        ],
        "source_id": "wikihow~11523",
    },
]


@pytest.fixture
def val_file(tmp_path: Path) -> Path:
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in LINES), encoding="utf-8")
    return path


@pytest.fixture
def gpt2_model() -> GPT:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32)
    return GPT(config).eval()


def reference_scores(model: nn.Module, example: dict[str, Any], tok: GPT2Tokenizer) -> list:
    """One ending at a time, no padding: (total log-prob, token count) of the ending tokens."""
    ctx = tok.encode(example["ctx"])
    out = []
    for ending in example["endings"]:
        end = tok.encode(" " + ending)
        row = torch.tensor([(ctx + end)[-model.config.block_size :]])
        logprobs = F.log_softmax(model(row)[0, :-1].float(), dim=-1)  # (T-1, V)
        picked = logprobs.gather(1, row[0, 1:, None])[:, 0]  # (T-1,)
        out.append((picked[-len(end) :].sum().item(), len(end)))
    return out


def reference_metrics(examples: list, scores: list) -> dict[str, float]:
    """acc, acc_norm, acc_bytes from per-ending (log-prob, tokens), 4 consecutive entries per example."""
    correct = {"acc": 0, "acc_norm": 0, "acc_bytes": 0}
    for k, ex in enumerate(examples):
        lp = [scores[4 * k + i][0] for i in range(4)]
        ntok = [scores[4 * k + i][1] for i in range(4)]
        nbytes = [len(e.encode()) for e in ex["endings"]]
        picks = {
            "acc": max(range(4), key=lambda i: lp[i]),
            "acc_norm": max(range(4), key=lambda i: lp[i] / ntok[i]),
            "acc_bytes": max(range(4), key=lambda i: lp[i] / nbytes[i]),
        }
        for name, pick in picks.items():
            correct[name] += pick == ex["label"]
    return {name: c / len(examples) for name, c in correct.items()}


def test_load_examples_reads_the_real_format(val_file: Path) -> None:
    examples = load_examples(val_file)
    assert [e["ind"] for e in examples] == [24, 92, 106, 4165, 7020]
    assert len(load_examples(val_file, limit=2)) == 2


def test_load_examples_rejects_other_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"ctx": "x", "endings": ["a", "b"], "label": 0}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not a HellaSwag example"):
        load_examples(bad)
    with pytest.raises(FileNotFoundError, match="no such HellaSwag file"):
        load_examples(tmp_path / "missing.jsonl")


def test_batched_scores_equal_one_example_at_a_time(val_file: Path, gpt2_model: GPT) -> None:
    tok = GPT2Tokenizer()
    examples = load_examples(val_file)
    rendered = [render(ex, tok, gpt2_model.config.block_size) for ex in examples]
    length = max(len(r) for ex in rendered for r in ex.rows)
    tokens, mask, _, _ = _batch(rendered, length, tok.eot_id, torch.device("cpu"))
    with torch.no_grad():
        logprob, ntok = ending_scores(gpt2_model, tokens, mask, "fp32")
        expected = [s for ex in examples for s in reference_scores(gpt2_model, ex, tok)]
    torch.testing.assert_close(
        logprob, torch.tensor([s[0] for s in expected]), rtol=1e-5, atol=1e-4
    )
    assert ntok.tolist() == [s[1] for s in expected]

    # A batch size that does not divide the set, and a compiled model, give the same metrics.
    want = reference_metrics(examples, expected)
    assert 0 < sum(want.values()) < 3  # not a degenerate all-right or all-wrong set
    compiled = torch.compile(gpt2_model, backend="eager")
    for model, batch_size in ((gpt2_model, 2), (compiled, 8)):
        got = hellaswag_eval(
            model, examples, tok, torch.device("cpu"), "fp32", DistInfo(), batch_size, False
        )
        assert got["n"] == len(examples)
        assert {k: got[k] for k in want} == want


class KnowsTheAnswer(nn.Module):
    """Same forward signature as GPT: logits that predict one given token sequence, and nothing else.

    Wherever the input so far is a prefix of `favoured`, the next token of `favoured` gets
    a logit of 30; every other logit is 0.
    """

    def __init__(self, favoured: list[list[int]], block_size: int, vocab_size: int) -> None:
        super().__init__()
        self.favoured = favoured
        self.config = SimpleNamespace(block_size=block_size, vocab_size=vocab_size)
        self.shapes: set[tuple[int, ...]] = set()

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        self.shapes.add(tuple(idx.shape))
        B, T = idx.shape
        logits = torch.zeros(B, T, self.config.vocab_size)
        for b, row in enumerate(idx.tolist()):
            for fav in self.favoured:
                for t in range(min(T, len(fav) - 1)):
                    if row[t] != fav[t]:
                        break
                    logits[b, t, fav[t + 1]] = 30.0
        return logits


@pytest.mark.parametrize("shift", [0, 1])
def test_a_model_that_knows_one_ending_picks_it(val_file: Path, shift: int) -> None:
    tok = GPT2Tokenizer()
    examples = load_examples(val_file)
    favoured = []
    for ex in examples:
        choice = (ex["label"] + shift) % 4  # shift 0: the right ending; 1: a wrong one
        favoured.append(tok.encode(ex["ctx"]) + tok.encode(" " + ex["endings"][choice]))
    model = KnowsTheAnswer(favoured, block_size=128, vocab_size=tok.vocab_size)
    got = hellaswag_eval(model, examples, tok, torch.device("cpu"), "fp32", DistInfo(), 2, False)
    want = 1.0 if shift == 0 else 0.0
    assert (got["acc"], got["acc_norm"], got["acc_bytes"]) == (want, want, want)
    assert got["acc_stderr"] == 0.0
    assert len(model.shapes) == 1, model.shapes  # one shape: a compiled model compiles once


def test_ranks_share_the_examples(val_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each of 2 ranks scores its share; the sums over ranks equal the single-process result."""
    tok = GPT2Tokenizer()
    examples = load_examples(val_file)
    favoured = []  # the right ending for even-numbered examples, a wrong one for odd ones
    for k, ex in enumerate(examples):
        choice = (ex["label"] + k % 2) % 4
        favoured.append(tok.encode(ex["ctx"]) + tok.encode(" " + ex["endings"][choice]))
    model = KnowsTheAnswer(favoured, block_size=128, vocab_size=tok.vocab_size)
    cpu = torch.device("cpu")
    single = hellaswag_eval(model, examples, tok, cpu, "fp32", DistInfo(), 2, False)
    assert single["acc"] == pytest.approx(3 / 5)
    # The sample standard error of the mean of the 0/1 outcomes, as lm-eval's mean_stderr:
    # stdev (n - 1 in the denominator) / sqrt(n), which for p = 3/5 is sqrt(p(1 - p)/(n - 1)).
    outcomes = [1, 0, 1, 0, 1]
    for name in ("acc", "acc_norm", "acc_bytes"):
        assert single[name] == pytest.approx(3 / 5)
        stderr = single[f"{name}_stderr"]
        assert stderr == pytest.approx(statistics.stdev(outcomes) / math.sqrt(5))
        assert stderr == pytest.approx(math.sqrt(0.6 * 0.4 / 4))
    # Stand-in for the all-reduce: this rank's value as the mean over 2 ranks, the other adding 0.
    monkeypatch.setattr(hellaswag, "all_reduce_mean", lambda value, info: value / info.world_size)
    parts = [
        hellaswag_eval(model, examples, tok, cpu, "fp32", DistInfo(r, r, 2), 2, False)
        for r in range(2)
    ]
    assert [(p["n"], p["acc"]) for p in parts] == [
        (3, 1.0),
        (2, 0.0),
    ]  # rank r: examples r, r+2, ...
    for name in ("acc", "acc_norm", "acc_bytes"):
        assert sum(p[name] * p["n"] for p in parts) == pytest.approx(single[name] * single["n"])


def test_download_is_cached_and_fails_fast_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPT2REPRO_CACHE", str(tmp_path / "cache"))
    calls = []

    def offline(url: str, timeout: float) -> Any:
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match=r"--hellaswag-path") as err:
        hellaswag.fetch_hellaswag()
    assert hellaswag.HELLASWAG_URL in str(err.value) and calls == [hellaswag.HELLASWAG_URL]
    assert not (tmp_path / "cache" / "hellaswag").exists() or not any(
        (tmp_path / "cache" / "hellaswag").iterdir()
    )

    body = "".join(json.dumps(line) + "\n" for line in LINES).encode()
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(body))
    path = hellaswag.fetch_hellaswag()
    assert path == tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"
    assert path.read_bytes() == body
    monkeypatch.setattr(hellaswag.urllib.request, "urlopen", offline)
    assert len(load_examples()) == len(LINES)  # from the cache, no network
