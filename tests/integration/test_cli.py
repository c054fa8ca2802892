"""The command line: happy paths, and bad input that must give one clear message and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt2repro.checkpoint import save_checkpoint
from gpt2repro.cli import main
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import load_tokenizer, train_bpe


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    assert code != 0
    assert err.startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_console_script_and_module_entry_points() -> None:
    args = ["sample", "init:tiny", "--max-new-tokens", "8", "--seed", "3"]
    a = subprocess.run([sys.executable, "-m", "gpt2repro", *args], capture_output=True, text=True)
    b = subprocess.run(
        [Path(sys.executable).with_name("gpt2repro"), *args], capture_output=True, text=True
    )
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and "--- sample 1/1 ---" in a.stdout


def test_sample_is_reproducible_by_seed(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["sample", "init:tiny", "--max-new-tokens", "12", "--num-samples", "2"]
    first = run_cli([*base, "--seed", "1"], capsys)
    again = run_cli([*base, "--seed", "1"], capsys)
    other = run_cli([*base, "--seed", "2"], capsys)
    assert first[0] == 0 and first[1] == again[1] and first[1] != other[1]
    assert first[1].count("--- sample") == 2


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli([], capsys)
    assert code == 0 and "sample" in out and "tokenizer train" in out


def test_bad_inputs_give_one_clear_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not a model")
    cases = [
        (["sample", "init:gpt3_175b"], ["Unknown model preset", "gpt2_124m"]),
        (["sample", str(tmp_path / "missing")], ["no such file or directory"]),
        (["sample", str(tmp_path)], ["neither a gpt2repro checkpoint"]),
        (["sample", "--prompt-file", str(tmp_path / "p.txt")], ["no such file"]),
        (["sample", "--prompt", "word " * 80], ["context is 64", "Shorten the prompt"]),
        (["sample", "--temperature", "-1"], ["temperature=-1"]),
        (["tokenizer", "train", str(text_file), "--vocab-size", "10"], ["258"]),
        (["tokenizer", "train", str(tmp_path / "nope.txt")], ["nope.txt"]),
        (["frobnicate"], ["Unknown command 'frobnicate'"]),
        (["bench", "speed"], ["Unknown command 'bench speed'", "bench peak", "bench train"]),
    ]
    for args, needles in cases:
        code, _, err = run_cli(args, capsys)
        assert_user_error(code, err, *needles)


@pytest.mark.parametrize("args", [["bench"], ["bench", "--help"], ["tokenizer", "-h"]])
def test_a_command_group_alone_lists_its_commands(
    args: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(args, capsys)
    assert code == 0 and not err
    listed = [line.split()[0:2] for line in out.splitlines() if line.startswith("  ")]
    assert listed and all(words[0] == args[0] for words in listed), out


def test_unknown_option_exits_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["sample", "--bogus", "1"], capsys)
    assert code != 0 and "Traceback" not in out + err and "--bogus" in out + err


def test_sample_from_checkpoint_and_vocab_mismatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\n" * 200)
    tok = train_bpe([corpus], 300, tmp_path / "tok.json", show_progress=False)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
    ckpt = save_checkpoint(tmp_path / "ckpt", GPT(cfg), tok, meta={"step": 0})
    code, out, err = run_cli(
        ["sample", str(ckpt), "--prompt", "the quick", "--max-new-tokens", "5"], capsys
    )
    assert code == 0, err
    assert out.splitlines()[1].startswith("the quick")
    code, _, err = run_cli(["sample", str(ckpt), "--tokenizer", "gpt2"], capsys)
    assert_user_error(code, err, f"vocabulary of {tok.vocab_size}", "50257")


def test_tokenizer_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be, that is the question\n" * 100)
    out_file = tmp_path / "bpe.json"
    code, out, err = run_cli(
        ["tokenizer", "train", str(corpus), "--vocab-size", "280", "--out", str(out_file)], capsys
    )
    assert code == 0, err
    assert out_file.is_file() and load_tokenizer(str(out_file)).vocab_size <= 280
    code, out, _ = run_cli(["tokenizer", "encode", "Hello world"], capsys)
    assert code == 0 and json.loads(out) == [15496, 995]
    code, out, _ = run_cli(["tokenizer", "encode", "<|endoftext|>", "--allow-special"], capsys)
    assert json.loads(out) == [50256]


def test_export_command_writes_hf_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["export", "init:tiny", str(tmp_path / "hf")], capsys)
    assert code == 0, err
    assert (tmp_path / "hf" / "config.json").is_file()
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    code, _, err = run_cli(["sample", str(tmp_path / "hf"), "--max-new-tokens", "4"], capsys)
    assert code == 0, err
