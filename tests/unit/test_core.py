"""CORE: prompts laid out as nanochat's, scores equal to a plain one-example-at-a-time loop,
centring against its closed form, each bad bundle file named, the download cached."""

from __future__ import annotations

import io
import json
import random
import urllib.error
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from gpt2repro.distributed import DistInfo
from gpt2repro.evaluation import core_bundle
from gpt2repro.evaluation.core import (
    TaskScore,
    centered,
    core_entries,
    core_eval,
    core_score,
    render_prompts,
    spans,
)
from gpt2repro.evaluation.core_bundle import CoreTask, fetch_bundle, read_bundle
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import GPT2Tokenizer

# ---- a bundle in eval_bundle.zip's layout ----

CORE_YAML = """\
icl_tasks:
-
  label: tiny_mc
  dataset_uri: tiny/mc.jsonl
  num_fewshot: [2]
  icl_task_type: multiple_choice
  continuation_delimiter: ' '
-
  label: tiny_schema
  dataset_uri: tiny/schema.jsonl
  num_fewshot: [1]
  icl_task_type: schema
-
  label: tiny_lm
  dataset_uri: tiny/lm.jsonl
  num_fewshot: [0]
  icl_task_type: language_modeling
  continuation_delimiter: ' '
-
  label: tiny_qa
  dataset_uri: tiny/qa.jsonl
  num_fewshot: [1]
  icl_task_type: language_modeling
  continuation_delimiter: "\\nAnswer: " # between question and answer
  has_categories: true
"""
META_CSV = """\
Eval Task,Task Category,Task Type,#shots,Random baseline,Centered Metric?,Description
tiny_mc,commonsense reasoning,multiple choice,2,25,,four choices
tiny_schema,language understanding,schema,1,50,,two contexts
tiny_lm,language understanding,language modeling,0,0,,last word
tiny_qa,world knowledge,language modeling,1,0,,short answers
"""
WORDS = ["river", "stone", "light", "winter", "garden", "voice", "paper", "window", "morning"]


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def task_lines() -> dict[str, list[dict[str, Any]]]:
    """Examples of each type. Some 2-shot multiple-choice prompts pass 64 tokens, the test
    model's context, so they are cut from the left."""
    rng = random.Random(0)
    mc = [
        {"query": f"Question: {_sentence(rng, 4 + 3 * i)}?",
         "choices": [_sentence(rng, 1 + (i + j) % 3) for j in range(4)], "gold": i % 4}
        for i in range(7)
    ]  # fmt: skip
    schema = [
        {"context_options": [_sentence(rng, 3 + j) for j in range(2)],
         "continuation": _sentence(rng, 3), "gold": i % 2}
        for i in range(5)
    ]  # fmt: skip
    # A random GPT with tied embeddings tends to predict its last input token again: a
    # continuation repeating the context's last word is often greedy, another word rarely.
    # (The test model repeats " stone", " garden" and " the" after a short context.)
    lm = []
    for i in range(8):
        last = ("stone", "garden", "the", "river")[i % 4]
        lm.append({"context": f"{_sentence(rng, 3)} {last}" + (" " if i % 3 == 0 else ""),
                   "continuation": last if i % 2 == 0 else "window"})  # fmt: skip
    qa = [
        {"context": f"Question: {_sentence(rng, 3)}?", "continuation": rng.choice(WORDS),
         "category": "tiny"}
        for _ in range(4)
    ]  # fmt: skip
    return {"mc": mc, "schema": schema, "lm": lm, "qa": qa}


def write_bundle(root: Path) -> Path:
    """A tiny eval_bundle folder: core.yaml, eval_meta_data.csv and eval_data/tiny/*.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "core.yaml").write_text(CORE_YAML, encoding="utf-8")
    (root / "eval_meta_data.csv").write_text(META_CSV, encoding="utf-8")
    data = root / "eval_data" / "tiny"
    data.mkdir(parents=True, exist_ok=True)
    for name, lines in task_lines().items():
        text = "".join(json.dumps(line) + "\n" for line in lines)
        (data / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return root


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_bundle(tmp_path / "eval_bundle")


def tiny_gpt2() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32)).eval()


# ---- prompts ----


def _task(task_type: str, examples: list[dict[str, Any]], shots: int, delim: str) -> CoreTask:
    return CoreTask("t", task_type, shots, delim, 25.0, Path("t.jsonl"), examples)


def test_fewshot_prompts_are_laid_out_as_nanochat_renders_them() -> None:
    # Random(1234 + idx) draws the shots among the other examples: for 4 examples,
    # example 0 gets [2, 1] (2-shot) and [2] (1-shot); example 3 gets [0, 1] and [0].
    mc = [{"query": f"Q{i}", "choices": [f"a{i}", f"b{i}"], "gold": i % 2} for i in range(4)]
    assert render_prompts(_task("multiple_choice", mc, 2, " "), 0) == [
        "Q2 a2\n\nQ1 b1\n\nQ0 a0",
        "Q2 a2\n\nQ1 b1\n\nQ0 b0",
    ]
    assert render_prompts(_task("multiple_choice", mc, 0, ": "), 3) == ["Q3: a3", "Q3: b3"]
    schema = [
        {"context_options": [f"c{i}x", f"c{i}y"], "continuation": f"then {i}", "gold": 1 - i % 2}
        for i in range(4)
    ]
    assert render_prompts(_task("schema", schema, 1, " "), 3) == [
        "c0y then 0\n\nc3x then 3",
        "c0y then 0\n\nc3y then 3",
    ]
    # Contexts are stripped; the prompt without the continuation is stripped as a whole,
    # so a delimiter of whitespace is left to the continuation's side.
    lm = [{"context": f" C{i} \n", "continuation": f"w{i}"} for i in range(4)]
    assert render_prompts(_task("language_modeling", lm, 2, "\nAnswer: "), 0) == [
        "C2\nAnswer: w2\n\nC1\nAnswer: w1\n\nC0\nAnswer:",
        "C2\nAnswer: w2\n\nC1\nAnswer: w1\n\nC0\nAnswer: w0",
    ]
    assert render_prompts(_task("language_modeling", lm, 0, " "), 1) == ["C1", "C1 w1"]


def test_scored_tokens_follow_the_common_prefix_or_suffix() -> None:
    bos = 0
    rows = [[bos, 5, 6, 7], [bos, 5, 6, 8, 9], [bos, 5, 6, 7, 1]]  # choices share " 7" at first
    assert spans("multiple_choice", rows, "x") == (rows, [3, 3, 3])
    rows = [[bos, 4, 8, 9], [bos, 5, 5, 8, 9]]  # two contexts, one continuation
    assert spans("schema", rows, "x") == (rows, [2, 3])
    assert spans("language_modeling", [[bos, 4], [bos, 4, 7, 8]], "x") == ([[bos, 4, 7, 8]], [2])
    with pytest.raises(ValueError, match=r"CORE task 't', example 2: .*not a prefix"):
        spans("language_modeling", [[bos, 4, 5], [bos, 4, 6, 8]], "task 't', example 2")


def test_bundle_is_read_with_nanochats_shuffle_and_limit(bundle: Path) -> None:
    tasks = read_bundle(bundle)
    assert [(t.label, t.task_type, t.num_fewshot, t.delimiter, t.random_baseline) for t in tasks] == [
        ("tiny_mc", "multiple_choice", 2, " ", 25.0),
        ("tiny_schema", "schema", 1, " ", 50.0),
        ("tiny_lm", "language_modeling", 0, " ", 0.0),
        ("tiny_qa", "language_modeling", 1, "\nAnswer: ", 0.0),
    ]  # fmt: skip
    mc = task_lines()["mc"]
    random.Random(1337).shuffle(mc)
    assert tasks[0].examples == mc
    limited = read_bundle(bundle, ["tiny_schema", "tiny_mc"], limit=3)
    assert [t.label for t in limited] == ["tiny_mc", "tiny_schema"]  # core.yaml's order
    assert limited[0].examples == mc[:3]
    with pytest.raises(ValueError, match=r"Unknown CORE task 'nope'.*tiny_mc, tiny_schema"):
        read_bundle(bundle, ["nope"])
    with pytest.raises(ValueError, match=r"'tiny_mc': 2-shot needs more than 2.*--limit 2"):
        read_bundle(bundle, limit=2)


# ---- scores against a plain loop ----


def reference_correct(model: GPT, tok: GPT2Tokenizer, task: CoreTask, idx: int) -> bool:
    """One example, unbatched, as nanochat's evaluate_example: BOS + prompt tokens, the
    continuation found by common prefix / suffix, rows cut from the left to the context."""
    ex = task.examples[idx]
    others = [i for i in range(len(task.examples)) if i != idx]
    shots = []
    if task.num_fewshot:
        shots = [
            task.examples[i] for i in random.Random(1234 + idx).sample(others, task.num_fewshot)
        ]
    d = task.delimiter
    if task.task_type == "multiple_choice":
        head = "".join(s["query"] + d + s["choices"][s["gold"]] + "\n\n" for s in shots)
        rows = [[tok.eot_id, *tok.encode(head + ex["query"] + d + c)] for c in ex["choices"]]
        start = 0
        while all(len(r) > start and r[start] == rows[0][start] for r in rows):
            start += 1
        spans = [(start, len(r)) for r in rows]
    elif task.task_type == "schema":
        head = "".join(
            s["context_options"][s["gold"]] + d + s["continuation"] + "\n\n" for s in shots
        )
        rows = [
            [tok.eot_id, *tok.encode(head + o + d + ex["continuation"])]
            for o in ex["context_options"]
        ]
        suffix = 0
        while all(len(r) > suffix and r[-1 - suffix] == rows[0][-1 - suffix] for r in rows):
            suffix += 1
        spans = [(len(r) - suffix, len(r)) for r in rows]
    else:
        head = "".join(s["context"].strip() + d + s["continuation"] + "\n\n" for s in shots)
        without = [tok.eot_id, *tok.encode((head + ex["context"].strip() + d).strip())]
        rows = [[tok.eot_id, *tok.encode(head + ex["context"].strip() + d + ex["continuation"])]]
        spans = [(len(without), len(rows[0]))]
    losses, greedy = [], []
    block = model.config.block_size
    for row, (s, e) in zip(rows, spans, strict=True):
        cut = max(0, len(row) - block)
        row, s, e = row[cut:], s - cut, e - cut
        with torch.no_grad():
            logits = model(torch.tensor([row]))[0]  # (T, V)
        targets = torch.tensor(row[s:e])
        losses.append(F.cross_entropy(logits[s - 1 : e - 1], targets).item())
        greedy.append(bool((logits[s - 1 : e - 1].argmax(-1) == targets).all()))
    if task.task_type == "language_modeling":
        return greedy[0]
    return losses.index(min(losses)) == ex["gold"]


def test_scores_equal_a_plain_loop_over_the_examples(bundle: Path) -> None:
    model, tok = tiny_gpt2(), GPT2Tokenizer()
    tasks = read_bundle(bundle)
    cpu = torch.device("cpu")
    # batch_size 1: forward passes of up to 4 rows, which split examples' rows between them.
    scores = core_eval(model, tasks, tok, cpu, "fp32", DistInfo(), batch_size=1, progress=False)
    expected = [
        sum(reference_correct(model, tok, t, i) for i in range(len(t.examples))) for t in tasks
    ]
    assert [s.correct for s in scores] == expected
    assert [s.n for s in scores] == [7, 5, 8, 4]
    assert 0 < expected[2] < 8, expected  # the language-modeling verdict is tested both ways
    longest = max(len(tok.encode(p)) + 1 for i in range(7) for p in render_prompts(tasks[0], i))
    assert longest > model.config.block_size  # some rows were cut from the left
    again = core_eval(model, tasks, tok, cpu, "fp32", DistInfo(), batch_size=8, progress=False)
    assert again == scores
    mean = (
        sum(
            (c / t_n - b / 100) / (1 - b / 100)
            for c, t_n, b in zip(expected, [7, 5, 8, 4], [25, 50, 0, 0], strict=True)
        )
        / 4
    )
    assert core_score(scores) == pytest.approx(mean, abs=1e-12)
    entries = core_entries(scores, tasks, complete=True, limit=None)
    assert entries["core"]["metrics"] == {"core": pytest.approx(mean, abs=1e-12)}
    assert entries["core:tiny_mc"]["metrics"]["acc"] == expected[0] / 7
    assert entries["core:tiny_mc"]["samples"] == 7
    assert "core" not in core_entries(scores[:1], tasks[:1], complete=False, limit=None)


# ---- centring ----


@pytest.mark.parametrize("baseline", [0.0, 25.0, 50.0, 20.0])
def test_centring_is_its_closed_form(baseline: float) -> None:
    b = baseline / 100
    assert centered(b, baseline) == pytest.approx(0.0, abs=1e-12)  # guessing scores 0
    assert centered(1.0, baseline) == pytest.approx(1.0)  # perfect scores 1
    for acc in (0.0, 0.3, 0.61):
        assert centered(acc, baseline) == pytest.approx((acc - b) / (1 - b))
    scores = [TaskScore("a", 10, 3, baseline), TaskScore("b", 4, 4, 0.0)]
    assert core_score(scores) == pytest.approx(((0.3 - b) / (1 - b) + 1.0) / 2)


# ---- bad bundles ----


def test_each_bad_bundle_file_has_one_clear_message(bundle: Path) -> None:
    data = bundle / "eval_data" / "tiny"
    lm = (data / "lm.jsonl").read_text()
    (data / "lm.jsonl").write_text(lm + '{"context": "no continuation"}\n')
    with pytest.raises(
        ValueError,
        match=rf"{data / 'lm.jsonl'}:9: not a language_modeling example.*'tiny_lm'.*continuation",
    ):
        read_bundle(bundle)
    (data / "lm.jsonl").write_text(lm.replace("\n", "\n{oops\n", 1))
    with pytest.raises(ValueError, match=rf"{data / 'lm.jsonl'}:2: not JSON"):
        read_bundle(bundle)
    (data / "lm.jsonl").write_text("\n")
    with pytest.raises(
        ValueError, match=rf"{data / 'lm.jsonl'}: no examples \(CORE task 'tiny_lm'\)"
    ):
        read_bundle(bundle)
    (data / "lm.jsonl").unlink()
    with pytest.raises(FileNotFoundError, match=rf"{data / 'lm.jsonl'}: no such file.*'tiny_lm'"):
        read_bundle(bundle)
    meta = bundle / "eval_meta_data.csv"
    meta.write_text("".join(line + "\n" for line in META_CSV.splitlines() if "tiny_qa" not in line))
    with pytest.raises(
        ValueError,
        match=r"eval_meta_data.csv: no row for core.yaml task 'tiny_qa'.*Random baseline",
    ):
        read_bundle(bundle)
    (bundle / "core.yaml").write_text("icl_tasks:\n- label: x\n  icl_task_type: ranking\n")
    with pytest.raises(ValueError, match=r"core.yaml: icl_tasks\[0\] needs label, dataset_uri"):
        read_bundle(bundle)
    with pytest.raises(FileNotFoundError, match=r"not a CORE bundle folder \(no core.yaml\)"):
        fetch_bundle(data)


def test_mc_gold_out_of_range_names_the_line(bundle: Path) -> None:
    path = bundle / "eval_data" / "tiny" / "mc.jsonl"
    path.write_text('{"query": "q", "choices": ["a", "b"], "gold": 2}\n')
    with pytest.raises(ValueError, match=r"mc.jsonl:1: not a multiple_choice example.*gold"):
        read_bundle(bundle)


# ---- download ----


def test_download_is_cached_and_fails_fast_offline(
    bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPT2REPRO_CACHE", str(tmp_path / "cache"))
    calls = []

    def offline(url: str, timeout: float) -> Any:
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(core_bundle.urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match=r"eval_bundle\.zip.*--core-path DIR") as err:
        fetch_bundle()
    assert core_bundle.BUNDLE_URL in str(err.value) and calls == [core_bundle.BUNDLE_URL]
    assert not any((tmp_path / "cache" / "core").iterdir())  # nothing half-written left

    body = io.BytesIO()
    with zipfile.ZipFile(body, "w") as z:  # the archive holds one folder, eval_bundle/
        for path in sorted(bundle.rglob("*")):
            if path.is_file():
                z.write(path, Path("eval_bundle") / path.relative_to(bundle))
    monkeypatch.setattr(
        core_bundle.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(body.getvalue())
    )
    root = fetch_bundle()
    assert root == tmp_path / "cache" / "core" / "eval_bundle"
    monkeypatch.setattr(core_bundle.urllib.request, "urlopen", offline)
    assert read_bundle(fetch_bundle())[0].examples == read_bundle(bundle)[0].examples
    assert len(calls) == 1  # the second time from the cache


# ---- bench and plot ----


def test_bench_eval_times_core_and_agrees_with_the_one_example_loop() -> None:
    from gpt2repro.bench.eval import bench_eval, synthetic_core_tasks

    tasks = synthetic_core_tasks(3)
    assert [t.task_type for t in tasks] == ["multiple_choice", "schema", "language_modeling"]
    result = bench_eval("init:tiny", examples=3, batch_size=2, rounds=1, device_name="cpu",
                        dtype="fp32")  # fmt: skip
    core = result["core"]
    assert core["examples"] == 9 and core["same_correct"] is True
    assert core["batched_examples_per_s"] > 0 and core["one_at_a_time_examples_per_s"] > 0
    assert bench_eval("init:tiny", 1, 1, 1, "cpu", "fp32", core=False)["core"] is None


def test_plot_draws_core_against_tokens_from_records_and_checkpoint_results(tmp_path: Path) -> None:
    from gpt2repro.evaluation.report import RESULTS_FILE
    from gpt2repro.plot import (
        CHECKPOINT_RESULTS,
        CORE_REFERENCES,
        core_figure,
        core_points,
        plot_runs,
    )

    assert CHECKPOINT_RESULTS == RESULTS_FILE
    run = tmp_path / "run"
    run.mkdir()
    records = [{"step": 10, "kind": "train", "loss": 5.0, "tokens": 1000},
               {"step": 10, "kind": "core", "core": 0.01, "tokens": 1000}]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for step, tokens, core in ((20, 2000, 0.05), (30, 3000, None)):
        ckpt = run / "checkpoints" / f"step_{step:06d}"
        ckpt.mkdir(parents=True)
        results = {} if core is None else {"core": {"metrics": {"core": core}}}
        data = {"results": results, "model": {"tokens": tokens}}
        (ckpt / CHECKPOINT_RESULTS).write_text(json.dumps(data))
    assert core_points(run) == ([1000, 2000], [0.01, 0.05])
    fig = core_figure([run])
    lines = fig.axes[0].get_lines()
    assert [ln.get_ydata()[0] for ln in lines[1:5]] == [r.value for r in CORE_REFERENCES]
    assert [r.value for r in CORE_REFERENCES] == [0.1139, 0.1849, 0.2146, 0.2565]
    written = plot_runs([run], tmp_path / "plots")
    assert tmp_path / "plots" / "core.png" in written


def test_card_lists_core_with_gpt2_beside_it() -> None:
    from gpt2repro.evaluation.card import CardInfo, render_card

    scores = [TaskScore("tiny_mc", 10, 4, 25.0), TaskScore("tiny_lm", 5, 1, 0.0)]
    tasks = [CoreTask(s.label, "multiple_choice", 0, " ", s.random_baseline, Path("x"), [])
             for s in scores]  # fmt: skip
    results = core_entries(scores, tasks, complete=True, limit=None)
    card = render_card(CardInfo("m", GPTConfig(), 124_000_000, "gpt2", results=results))
    assert "| core | core | 0.2000 |" in card  # ((0.4 - 0.25) / 0.75 + 0.2) / 2
    assert "zero-shot (CORE's tasks few-shot)" in card
    assert "| core:tiny_mc | centered | 0.2000 |" in card
    assert "OpenAI GPT-2 scores 124M 0.1139, 350M 0.1849, 774M 0.2146, 1558M 0.2565" in card
    assert "CORE" not in render_card(CardInfo("m", GPTConfig(), 1, "gpt2"))
