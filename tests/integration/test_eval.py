"""`gpt2repro eval`: validation metrics against a direct computation, HellaSwag and lm-eval tasks, one JSON file."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt2repro.checkpoint import save_checkpoint
from gpt2repro.data.manifest import read_manifest, split_shards
from gpt2repro.data.prepare import prepare_dataset
from gpt2repro.data.shards import read_tokens
from gpt2repro.evaluation.commands import EvalArgs, run_eval
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import GPT2Tokenizer

WORDS = ["river", "stone", "light", "winter", "garden", "voice", "paper", "window", "morning"]
HELLASWAG = [
    {
        "ind": 1, "activity_label": "Baking cookies", "ctx_a": "A woman mixes flour and butter in a bowl.",
        "ctx_b": "she", "ctx": "A woman mixes flour and butter in a bowl. she", "split": "val",
        "split_type": "indomain", "label": 2,
        "endings": ["throws the bowl at the wall.", "paints the oven blue.",
                    "rolls the dough into small balls.", "goes swimming in the lake."],
        "source_id": "activitynet~v_abc",
    },
    {
        "ind": 2, "activity_label": "Home and Garden", "ctx_a": "[header] How to water a cactus [title] Check the soil.",
        "ctx_b": "", "ctx": "[header] How to water a cactus [title] Check the soil.", "split": "val",
        "split_type": "zeroshot", "label": 0,
        "endings": ["[step] Water only when the soil is completely dry.", "[step] Sing to it loudly.",
                    "[title] Buy a new car.", "[step] Freeze the cactus overnight."],
        "source_id": "wikihow~123",
    },
]  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32))
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "step_000010"
    meta = {"step": 10, "train_state": {"tokens": 20480}}
    return save_checkpoint(path, model, GPT2Tokenizer(), meta)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for i in range(24):
        words = rng.choice(WORDS, size=60)
        (root / f"doc_{i:02d}.txt").write_text(" ".join(words) + ".\n", encoding="utf-8")
    return prepare_dataset(
        "files", root.parent / "data", paths=[str(root)], out_name="words", val_fraction=0.5,
        workers=1, progress=False,
    )  # fmt: skip


@pytest.fixture
def hellaswag_file(tmp_path: Path) -> Path:
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in HELLASWAG), encoding="utf-8")
    return path


def direct_val_loss(checkpoint: Path, dataset: Path, seq_len: int) -> float:
    """Mean next-token loss over every non-overlapping (seq_len + 1)-token window of each val shard."""
    from gpt2repro.checkpoint import load_model

    model, _, _ = load_model(checkpoint)
    total, count = 0.0, 0
    for shard in split_shards(read_manifest(dataset), dataset, "val"):
        _, tokens = read_tokens(shard)
        n = (len(tokens) - 1) // seq_len
        for i in range(n):
            window = torch.from_numpy(
                tokens[i * seq_len : i * seq_len + seq_len + 1].astype(np.int64)
            )
            with torch.no_grad():
                logits = model(window[None, :-1])[0]
            total += F.cross_entropy(logits, window[1:], reduction="sum").item()
            count += seq_len
    return total / count


def test_val_and_hellaswag_results_go_next_to_the_checkpoint(
    checkpoint: Path, dataset: Path, hellaswag_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = EvalArgs(
        str(checkpoint), tasks=("val", "hellaswag"), data="words", data_root=dataset.parent,
        val_tokens=None, seq_len=32,
        hellaswag_path=hellaswag_file, device="cpu", dtype="fp32", batch_size=4,
    )  # fmt: skip
    results = run_eval(args)
    out = capsys.readouterr().out
    assert "val:words/val" in out and "hellaswag" in out and "acc_norm" in out and "lower" in out

    saved = json.loads((checkpoint / "eval_results.json").read_text())
    assert saved["model"]["step"] == 10 and saved["model"]["tokenizer"] == "gpt2"
    assert saved["results"].keys() == results.keys() == {"val:words/val", "hellaswag"}
    val = saved["results"]["val:words/val"]
    loss = val["metrics"]["loss"]
    assert loss == pytest.approx(direct_val_loss(checkpoint, dataset, 32), rel=1e-5)
    split = read_manifest(dataset)["splits"]["val"]
    assert val["metrics"]["ppl"] == pytest.approx(math.exp(loss))
    # Bits per byte from the manifest's byte count: comparable across tokenizers.
    bpb = loss / math.log(2) * split["tokens"] / split["bytes"]
    assert val["metrics"]["bpb"] == pytest.approx(bpb)
    assert val["higher_is_better"] == {"loss": False, "ppl": False, "bpb": False}
    hs = saved["results"]["hellaswag"]
    assert hs["samples"] == 2 and set(hs["metrics"]) == {"acc", "acc_norm", "acc_bytes"}
    assert set(hs["stderr"]) == {"acc", "acc_norm", "acc_bytes"}

    # A later run adds to the same file.
    run_eval(
        EvalArgs(
            str(checkpoint),
            tasks=("hellaswag",),
            hellaswag_path=hellaswag_file,
            limit=1,
            device="cpu",
        )
    )
    again = json.loads((checkpoint / "eval_results.json").read_text())
    assert again["results"].keys() == {"val:words/val", "hellaswag"}
    assert again["results"]["hellaswag"]["samples"] == 1


# A random GPT with tied embeddings predicts its last input token again, so the harness
# scores the second text as greedy and the first as not: acc is neither 0 nor 1.
LAMBADA_TEXTS = ["The river carried the silver stone", "The garden carried the the"]


def test_inputs_are_checked_first_and_finished_tasks_are_kept(
    checkpoint: Path,
    dataset: Path,
    hellaswag_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gpt2repro.evaluation.hellaswag as hellaswag
    import gpt2repro.evaluation.val as val

    out = tmp_path / "results.json"
    common = dict(data="words", data_root=dataset.parent, seq_len=32, out=out, dtype="fp32")
    # A HellaSwag file that cannot be had fails before val computes anything.
    real_split_loss = val.split_loss
    monkeypatch.setattr(val, "split_loss", lambda *a, **k: pytest.fail("val ran"))
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl"):
        run_eval(EvalArgs(str(checkpoint), tasks=("val", "hellaswag"),
                          hellaswag_path=tmp_path / "nope.jsonl", **common))  # fmt: skip
    # A task failing mid-way keeps the results of the tasks before it.
    monkeypatch.setattr(val, "split_loss", real_split_loss)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory in hellaswag")

    monkeypatch.setattr(hellaswag, "hellaswag_eval", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        run_eval(EvalArgs(str(checkpoint), tasks=("val", "hellaswag"),
                          hellaswag_path=hellaswag_file, **common))  # fmt: skip
    saved = json.loads(out.read_text())["results"]
    assert list(saved) == ["val:words/val"]
    assert math.isclose(
        saved["val:words/val"]["metrics"]["loss"], direct_val_loss(checkpoint, dataset, 32),
        rel_tol=1e-5,
    )  # fmt: skip


def test_lm_eval_task_names_are_checked_before_val_and_offline_says_what_to_do(
    checkpoint: Path, dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("lm_eval")
    import lm_eval

    import gpt2repro.evaluation.harness as harness
    import gpt2repro.evaluation.val as val

    index = SimpleNamespace(all_tasks=["lambada_openai"])  # lm-eval's index takes ~10 s
    monkeypatch.setattr(harness, "task_manager", lambda: index)
    monkeypatch.setattr(val, "split_loss", lambda *a, **k: pytest.fail("val ran"))
    common = dict(data="words", data_root=dataset.parent, out=tmp_path / "r.json", dtype="fp32")
    with pytest.raises(ValueError, match=r"Unknown lm-eval task.*lambada_opneai"):
        run_eval(EvalArgs(str(checkpoint), tasks=("val", "lm_eval:lambada_opneai"), **common))

    def offline(**kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'EleutherAI/lambada_openai' on the Hub")

    monkeypatch.setattr(lm_eval, "simple_evaluate", offline)
    with pytest.raises(ConnectionError, match=r"Couldn.t reach.*HF_DATASETS_OFFLINE=1.*PATH\.yaml"):
        run_eval(EvalArgs(str(checkpoint), tasks=("lm_eval:lambada_openai",), **common))


def direct_loglikelihood(checkpoint: Path, context: str, target: str) -> tuple[float, bool]:
    """log p(target | context) summed over the target's tokens, and whether each is the argmax."""
    from gpt2repro.checkpoint import load_model

    model, _, _ = load_model(checkpoint)
    tok = GPT2Tokenizer()
    ctx = tok.encode(context)
    cont = tok.encode(context + target)[len(ctx) :]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids[:, :-1])[0, len(ctx) - 1 :], dim=-1)  # (len(cont), V)
    target_ids = torch.tensor(cont)
    greedy = bool((logprobs.argmax(-1) == target_ids).all())
    return float(logprobs.gather(1, target_ids[:, None]).sum()), greedy


def test_lm_eval_tasks_run_through_the_harness(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("lm_eval")
    from gpt2repro.evaluation import harness

    real = harness.task_manager  # without indexing the whole harness (~10 s)
    monkeypatch.setattr(harness, "task_manager", lambda: real(include_defaults=False))
    data = tmp_path / "tiny.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in LAMBADA_TEXTS))
    task = tmp_path / "tiny_lambada.yaml"
    task.write_text(
        f"task: tiny_lambada\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {tmp_path / 'cache'}\noutput_type: loglikelihood\ntest_split: test\n"
        "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
        "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\nmetric_list:\n  - metric: acc\n"
        "  - metric: perplexity\n"
    )
    out = tmp_path / "results.json"
    args = EvalArgs(
        str(checkpoint), tasks=(f"lm_eval:{task}",), device="cpu", dtype="fp32", out=out
    )
    results = run_eval(args)

    scores = [
        direct_loglikelihood(checkpoint, text.rsplit(" ", 1)[0], " " + text.rsplit(" ", 1)[1])
        for text in LAMBADA_TEXTS
    ]
    assert [greedy for _, greedy in scores] == [False, True]  # else acc checks nothing
    metrics = results["lm_eval:tiny_lambada"]["metrics"]
    assert metrics["acc"] == pytest.approx(0.5)
    mean_ll = sum(ll for ll, _ in scores) / len(scores)
    assert metrics["perplexity"] == pytest.approx(math.exp(-mean_ll), rel=1e-4)
    assert json.loads(out.read_text())["results"]["lm_eval:tiny_lambada"]["samples"] == 2


def test_bad_arguments_are_reported_together(checkpoint: Path, dataset: Path) -> None:
    args = EvalArgs(str(checkpoint), tasks=("val", "mmlu"), limit=0, dtype="fp8")
    with pytest.raises(ValueError) as err:
        run_eval(args)
    for needle in ("unknown task 'mmlu'", "needs --data", "--limit 0", "--dtype fp8"):
        assert needle in str(err.value)


def test_val_refuses_a_dataset_of_another_tokenizer(checkpoint: Path, tmp_path: Path) -> None:
    from gpt2repro.data.train_bpe import train_bpe

    texts = []
    for i in range(10):
        texts.append(tmp_path / "docs" / f"{i}.txt")
        texts[-1].parent.mkdir(exist_ok=True)
        texts[-1].write_text(" ".join(WORDS[i % 3 :] * 20), encoding="utf-8")
    tok = train_bpe(texts, 300, tmp_path / "bpe.json", show_progress=False)
    data = prepare_dataset(
        "files", tmp_path / "data", tok.spec, paths=[str(tmp_path / "docs")], out_name="bpe",
        val_fraction=0.5, workers=1, progress=False,
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=r"was tokenized with 'bpe-\w+', but the model uses 'gpt2'"
    ):
        run_eval(EvalArgs(str(checkpoint), tasks=("val",), data=str(data), device="cpu"))


def test_val_on_a_shard_with_a_corrupt_token_names_the_shard(
    checkpoint: Path, dataset: Path, tmp_path: Path
) -> None:
    data = tmp_path / "words"
    shutil.copytree(dataset, data)
    shard = data / "val_000000.bin"
    raw = bytearray(shard.read_bytes())
    raw[256 + 2 * 5 : 256 + 2 * 6] = (60000).to_bytes(2, "little")  # a bit flip past the header
    shard.write_bytes(bytes(raw))
    args = EvalArgs(str(checkpoint), tasks=("val",), data=str(data), seq_len=32, device="cpu")
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(str(shard))}: token 60000 is not below the vocabulary size 50257.*"
        rf"`gpt2repro data verify {re.escape(str(data))}`",
    ):
        run_eval(args)


# ---- CORE ----


def test_core_scores_every_task_and_their_mean_and_prints_gpt2_beside_it(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from unit.test_core import write_bundle

    from gpt2repro.checkpoint import load_model
    from gpt2repro.distributed import DistInfo
    from gpt2repro.evaluation.core import core_eval
    from gpt2repro.evaluation.core_bundle import read_bundle

    bundle = write_bundle(tmp_path / "eval_bundle")
    out = tmp_path / "results.json"
    args = EvalArgs(str(checkpoint), tasks=("core",), core_path=bundle, device="cpu",
                    dtype="fp32", batch_size=2, out=out)  # fmt: skip
    results = run_eval(args)
    printed = capsys.readouterr().out
    assert "tiny_schema" in printed and "OpenAI GPT-2 1558M" in printed and "0.2565" in printed
    saved = json.loads(out.read_text())["results"]
    labels = ["tiny_mc", "tiny_schema", "tiny_lm", "tiny_qa"]
    assert list(saved) == list(results) == [f"core:{x}" for x in labels] + ["core"]
    model, tok, _ = load_model(checkpoint)
    scores = core_eval(model, read_bundle(bundle), tok, torch.device("cpu"), "fp32", DistInfo(),
                       progress=False)  # fmt: skip
    for s in scores:
        entry = saved[f"core:{s.label}"]
        assert entry["metrics"] == {"acc": s.accuracy, "centered": pytest.approx(s.centered)}
        assert entry["samples"] == s.n and entry["info"]["random_baseline"] == s.random_baseline
    mean = sum(s.centered for s in scores) / 4
    assert saved["core"]["metrics"]["core"] == pytest.approx(mean)
    assert saved["core"]["info"]["gpt2"]["OpenAI GPT-2 124M"] == 0.1139

    # One task alone: its entry, no mean.
    one = run_eval(EvalArgs(str(checkpoint), tasks=("core:tiny_lm",), core_path=bundle,
                            device="cpu", out=tmp_path / "one.json"))  # fmt: skip
    assert list(one) == ["core:tiny_lm"]


def test_a_bad_core_bundle_exits_2_naming_the_file_before_any_task_runs(
    checkpoint: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    from helpers import assert_user_error, run_cli
    from unit.test_core import write_bundle

    import gpt2repro.evaluation.val as val

    monkeypatch.setattr(val, "split_loss", lambda *a, **k: pytest.fail("val ran"))
    bundle = write_bundle(tmp_path / "eval_bundle")
    bad = bundle / "eval_data" / "tiny" / "qa.jsonl"
    bad.write_text(bad.read_text() + "not json\n")
    argv = ["eval", str(checkpoint), "--tasks", "val", "core", "--core-path", str(bundle),
            "--data", "words", "--data-root", str(dataset.parent), "--out", str(tmp_path / "r.json")]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 2
    assert_user_error(code, err, f"{bad}:5: not JSON")
    code, _, err = run_cli(["eval", str(checkpoint), "--tasks", "core:nope", "--core-path",
                            str(bundle)], capsys)  # fmt: skip
    assert_user_error(code, err, "Unknown CORE task 'nope'")
    code, _, err = run_cli(["eval", str(checkpoint), "--tasks", "core:"], capsys)
    assert_user_error(code, err, "unknown task 'core:'")
