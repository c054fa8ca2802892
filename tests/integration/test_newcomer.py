"""What a newcomer types after the default run: the run directory it printed as the model, eval
without --data, and the mistakes (nonsense numbers, a file for a folder, two prompts) that must
each be one clear line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_cli

from gpt2repro.config import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from gpt2repro.model import GPTConfig
from gpt2repro.training.loop import train


def assert_one_error_line(code: int, err: str, *needles: str) -> None:
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and "Errno" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture(scope="module")
def run_dir(corpus: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step training run on the tiny corpus, named as the run's config names it (dataset
    name + data root), with checkpoints best, step_000002 and step_000004."""
    out_dir = tmp_path_factory.mktemp("runs") / "tiny_run"
    cfg = TrainConfig(
        model=GPTConfig(vocab_size=300, block_size=32, n_layer=1, n_head=2, n_embd=32),
        data=DataConfig(
            dataset="tiny",  # the corpus fixture's name, found under data_root as train does
            data_root=corpus.data_dir.parent,
            tokenizer=corpus.tokenizer,
        ),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=1),
        batch=BatchConfig(tokens_per_step=2 * 32, micro_batch=2, seq_len=32),
        run=RunConfig(max_steps=4, device="cpu", dtype="fp32", out_dir=out_dir, seed=7),
        eval=EvalConfig(interval=2, val_tokens=64, sample_interval=0, sample_tokens=4),
        checkpoint=CheckpointConfig(interval=2, keep_last=2),
        log=LogConfig(interval=1, tensorboard=False),
    )
    train(cfg)
    assert (out_dir / "checkpoints" / "best" / "meta.json").is_file()
    return out_dir


def using_best(run_dir: Path) -> str:
    return f"using {run_dir / 'checkpoints' / 'best'} (the run's best checkpoint)"


def test_sample_takes_a_run_directory(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["sample", str(run_dir), "--max-new-tokens", "3"], capsys)
    assert code == 0 and "--- sample 1/1 ---" in out, err
    assert err.strip() == using_best(run_dir)


def test_eval_takes_a_run_directory_and_its_training_dataset(
    run_dir: Path, corpus: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["eval", str(run_dir), "--tasks", "val", "--val-tokens", "64", "--device", "cpu"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert using_best(run_dir) in err
    assert f"val: using the dataset the checkpoint was trained on: {corpus.data_dir}" in out
    results = json.loads((run_dir / "checkpoints" / "best" / "eval_results.json").read_text())
    assert f"val:{corpus.data_dir.name}/val" in results["results"]


def test_export_takes_a_run_directory(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["export", str(run_dir), str(tmp_path / "hf")], capsys)
    assert code == 0, err
    assert using_best(run_dir) in err and (tmp_path / "hf" / "config.json").is_file()


def test_card_takes_a_run_directory(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["card", str(run_dir)], capsys)
    assert code == 0, err
    assert using_best(run_dir) in err
    readme = run_dir / "checkpoints" / "best-hf" / "README.md"
    assert f"wrote {readme}" in out and "# tiny_run" in readme.read_text()


def test_eval_says_where_the_training_dataset_was_looked_for(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # --data-root's default, data/, is empty here
    moved = shutil.copytree(run_dir / "checkpoints" / "best", tmp_path / "ckpt")
    meta = json.loads((moved / "meta.json").read_text())
    meta["config"]["data"]["data_root"] = str(tmp_path / "gone")
    (moved / "meta.json").write_text(json.dumps(meta))
    code, _, err = run_cli(["eval", str(moved), "--tasks", "val", "--device", "cpu"], capsys)
    assert_one_error_line(
        code, err, "trained on 'tiny'", f"not found under {tmp_path / 'gone'} or data", "--data"
    )
    # An export records no training dataset: val still asks for --data, before loading anything.
    assert run_cli(["export", str(moved), str(tmp_path / "hf")], capsys)[0] == 0
    code, _, err = run_cli(["eval", str(tmp_path / "hf"), "--tasks", "val"], capsys)
    assert_one_error_line(code, err, "the val task needs --data")


def test_nonsense_training_numbers_are_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = ["train", "--optim.lr", "inf", "--optim.weight-decay", "nan", "--optim.grad-clip"]
    args += ["nan", "--run.max-minutes", "nan", "--stability.spike-zscore", "-1", "--dry-run"]
    code, _, err = run_cli(args, capsys)
    assert_one_error_line(
        code, err, "optim.lr=inf must be finite and positive", "optim.weight_decay=nan",
        "optim.grad_clip=nan", "run.max_minutes=nan", "stability.spike_zscore=-1.0",
    )  # fmt: skip


def test_a_file_as_the_run_directory_is_one_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "out"
    a_file.write_text("")
    code, _, err = run_cli(["train", "--run.out-dir", str(a_file), "--dry-run"], capsys)
    assert_one_error_line(code, err, f"{a_file} is a file", "choose a directory path")


@pytest.mark.parametrize("name", ["toks", "toks.json"])
def test_a_directory_as_the_tokenizer_file_is_one_error(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be " * 50)
    folder = tmp_path / name
    folder.mkdir()
    args = ["tokenizer", "train", str(text), "--vocab-size", "260", "--out", str(folder)]
    code, _, err = run_cli([*args, "--overwrite"], capsys)
    assert_one_error_line(
        code, err, "must be a .json file path, not a directory", str(folder / "tokenizer.json")
    )


def test_sample_refuses_two_prompts_and_bad_numbers_together(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("from the file")
    args = ["sample", "--prompt", "typed", "--prompt-file", str(prompt), "--temperature", "inf"]
    args += ["--top-p", "nan", "--num-samples", "0", "--seed", "-1"]
    code, _, err = run_cli(args, capsys)
    assert_one_error_line(
        code, err, "--prompt and --prompt-file both give a prompt: pass only one of them",
        "--temperature inf must be finite", "--top-p nan must be in (0, 1]",
        "--num-samples 0 must be >= 1", "--seed -1 must be in [0, 4294967296)",
    )  # fmt: skip
