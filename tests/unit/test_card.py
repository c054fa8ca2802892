"""Model cards: exported next to the checkpoint, with metadata, training facts, results and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt2repro.checkpoint import save_checkpoint
from gpt2repro.evaluation.card import write_card
from gpt2repro.evaluation.commands import CardArgs, run_card
from gpt2repro.evaluation.report import task_entry, write_results
from gpt2repro.loading import load_source
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import GPT2Tokenizer

CONFIG = {
    "data": {"dataset": "fineweb-edu", "tokenizer": "gpt2"},
    "optim": {"lr": 0.0006, "min_lr": 6e-05, "warmup_steps": 715},
    "batch": {"tokens_per_step": 524288, "micro_batch": 64, "seq_len": 1024},
    "run": {"max_steps": 19073, "dtype": "bf16", "seed": 1337},
}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    run = tmp_path / "gpt2_124m_fineweb_edu"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(CONFIG))
    (run / "environment.json").write_text(
        json.dumps({"git_revision": "abc123", "hardware": {"device": "cuda", "gpu": "H100"}})
    )
    records = [
        {"step": 100, "kind": "train", "loss": 6.0, "tokens": 52428800},
        {"step": 100, "kind": "val", "loss": 6.1, "ppl": 445.9, "bpb": 2.1, "tokens": 52428800},
        {"step": 100, "kind": "hellaswag", "acc_norm": 0.27, "acc_norm_stderr": 0.0044, "acc": 0.26, "n": 10042},
        {"step": 200, "kind": "val", "loss": 5.0, "ppl": 148.4, "bpb": 1.8},  # after the checkpoint
    ]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32))
    meta = {"step": 100, "train_state": {"tokens": 52428800}, "config": CONFIG}
    path = save_checkpoint(run / "checkpoints" / "step_000100", model, GPT2Tokenizer(), meta)
    hellaswag = task_entry(
        {"acc": 0.2859, "acc_norm": 0.2955}, {"acc": 0.0045, "acc_norm": 0.0046}, 10042
    )
    lambada = task_entry(
        {"perplexity": 40.06, "acc": 0.3256}, {"perplexity": 1.48, "acc": 0.0065}, 5153
    )
    write_results(
        path / "eval_results.json",
        {"hellaswag": hellaswag, "lm_eval:lambada_openai": lambada},
        {"source": str(path)},
    )
    return path


def test_card_next_to_the_export(checkpoint: Path) -> None:
    yaml = pytest.importorskip("yaml")
    readme = write_card(checkpoint)
    export = checkpoint.with_name("step_000100-hf")
    assert readme == export / "README.md"
    assert load_source(str(export)).model.config.n_embd == 32  # a loadable export

    text = readme.read_text()
    header = yaml.safe_load(text.split("---")[1])
    assert header["license"] == "mit" and header["library_name"] == "transformers"
    assert header["datasets"] == ["HuggingFaceFW/fineweb-edu"]
    (entry,) = header["model-index"]
    assert entry["name"] == "gpt2_124m_fineweb_edu"
    scores = {
        (r["dataset"]["name"], m["type"]): m["value"]
        for r in entry["results"]
        for m in r["metrics"]
    }
    assert scores[("hellaswag", "acc_norm")] == 0.2955
    assert scores[("lm_eval:lambada_openai", "perplexity")] == 40.06

    assert "# gpt2_124m_fineweb_edu" in text
    assert (
        "| layers | 2 |" in text
        and "| width (n_embd) | 32 |" in text
        and "| context (tokens) | 64 |" in text
    )
    assert "OpenAI's GPT-2 BPE" in text
    assert "- dataset: fineweb-edu" in text and "- tokens seen: 52.43M (52,428,800)" in text
    assert "- optimizer steps: 100" in text
    assert '"warmup_steps": 715' in text and '"gpu": "H100"' in text
    # Results with direction and standard error; the run's own records up to the checkpoint's step.
    assert "| hellaswag | acc_norm | 0.2955 | 0.0046 | ↑ |" in text
    assert "| lm_eval:lambada_openai | perplexity | 40.0600 | 1.4800 | ↓ |" in text
    assert "| training val (step 100) | loss | 6.1000 |  | ↓ |" in text
    assert "| training hellaswag (step 100) | acc_norm | 0.2700 | 0.0044 | ↑ |" in text
    for png in ("loss_steps.png", "loss_tokens.png", "hellaswag.png"):
        assert f"![{png}]({png})" in text and (export / png).is_file()
    assert "## Limitations" in text


def test_a_second_card_follows_the_checkpoint_not_an_old_export(checkpoint: Path) -> None:
    export = checkpoint.with_name("step_000100-hf")
    write_card(checkpoint)
    mine = task_entry({"acc_norm": 0.5}, {"acc_norm": 0.01}, 100)
    write_results(export / "eval_results.json", {"hellaswag": mine}, {"source": str(export)})
    # The same weights again: the export and the results measured on it stay.
    assert "| hellaswag | acc_norm | 0.5000 |" in write_card(checkpoint).read_text()
    # More training wrote new weights under the same name (as `best` does).
    meta = json.loads((checkpoint / "meta.json").read_text())
    newer = load_source(str(checkpoint)).model
    with torch.no_grad():
        newer.transformer.wpe.weight.add_(1.0)
    save_checkpoint(checkpoint, newer, GPT2Tokenizer(), meta | {"step": 150})
    text = write_card(checkpoint).read_text()
    exported = load_source(str(export)).model.state_dict()
    assert all(torch.equal(exported[k], v) for k, v in newer.state_dict().items())
    assert "- optimizer steps: 150" in text and "0.5000" not in text  # old results gone too


def test_a_card_never_replaces_the_export_of_another_model(
    checkpoint: Path, tmp_path: Path
) -> None:
    other = save_checkpoint(
        tmp_path / "other",
        GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32)),
        GPT2Tokenizer(),
        {"step": 5},
    )
    target = tmp_path / "published"
    write_card(other, export_dir=target)
    (target / "my_notes.txt").write_text("keep me")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(FileExistsError, match="holds an export of other weights"):
        write_card(checkpoint, export_dir=target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert json.loads((target / "gpt2repro.json").read_text())["source"] == str(other.resolve())


def test_card_for_an_export_and_the_command(checkpoint: Path, tmp_path: Path) -> None:
    export = tmp_path / "exported"
    readme = run_card(CardArgs(checkpoint, export_dir=export, name="tiny", license="apache-2.0"))
    assert readme == export / "README.md" and "license: apache-2.0" in readme.read_text()
    # An exported directory on its own: the card says what it can.
    (export / "README.md").unlink()
    text = write_card(export).read_text()
    assert "# exported" in text and "- tokens seen: unknown" in text
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        write_card(tmp_path / "missing")
