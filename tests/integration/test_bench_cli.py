"""`gpt2repro bench loader` and `bench eval` through the command line, on tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import run_cli

from gpt2repro.bench.loader import write_synthetic_dataset


def test_bench_loader_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_synthetic_dataset(tmp_path / "data", tokens=20_000, shard_tokens=6_000)
    out = tmp_path / "results" / "loader.json"
    args = ["bench", "loader", "--data-dir", str(data), "--shapes", "4x16", "2x32"]
    args += ["--prefetch", "0", "2", "--tokens", "1000", "--rounds", "1", "--out", str(out)]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["bench"] == "loader" and len(result["rows"]) == 2
    assert all(row["same_tokens"] for row in result["rows"])
    assert "ratio_prefetch2_vs_raw" in stdout and f"wrote {out}" in stdout


def test_bench_train_command_pairs_steps_and_brackets_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "train.json"
    args = ["bench", "train", "--shapes", "shakespeare_cpu", "--steps", "2"]
    args += ["--min-seconds", "0", "--no-compile", "--device", "cpu", "--out", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    base, bf16 = result["rows"]
    assert (base["dtype"], bf16["dtype"]) == ("fp32", "bf16")
    assert len(base["step_s"]) == len(bf16["step_s"]) == 2  # taken side by side
    triples = bf16["bracketed"]["triples"]
    assert [t[1] for t in triples] == bf16["step_s"] and all(t[0] > 0 and t[2] > 0 for t in triples)
    target = result["targets"]["shakespeare_cpu"]
    assert target["best_bf16"] == "compile=False"
    assert len(target["mfu_by_phase"]) == len(bf16["bracketed"]["phases"])


def test_bench_eval_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    args = ["bench", "eval", "--model", "init:tiny", "--examples", "2", "--batch-size", "2"]
    args += ["--rounds", "1", "--device", "cpu", "--dtype", "fp32", "--out", str(out)]
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["bench"] == "eval" and result["examples"] == 2 and result["speedup"] > 0
    assert "one_at_a_time_examples_per_s" in stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bench", "loader", "--shapes", "16by1024"], "BATCHxSEQ_LEN"),
        (["bench", "loader", "--data-dir", "/nonexistent/data"], "not a prepared dataset"),
        (["bench", "eval", "--model", "init:nope"], "Unknown model preset"),
        (["bench", "eval", "--model", "init:tiny", "--dtype", "xx"], "dtype 'xx': use auto"),
        (["bench", "loss", "--dtype", "xx", "--tokens", "8"], "dtype 'xx': use auto"),
        (["bench", "loss", "--tokens", "-1"], "tokens=-1, n_embd=768"),
        (["bench", "sample", "--model", "init:tiny", "--prompt-tokens", "-3"], "prompt_tokens=-3"),
        (["bench", "train", "--steps", "0"], "steps=0 must be at least 1"),
        (["bench", "peak", "--device", "xpu"], "Device 'xpu' is not supported"),
        (["sample", "init:tiny", "--temperature", "nan"], "--temperature nan must be finite"),
    ],
)
def test_bench_commands_report_bad_input_in_one_line(
    args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(args, capsys)
    assert code != 0 and err.startswith("error: ") and "Traceback" not in err
    assert needle in err, err


def test_sample_names_a_prompt_file_that_is_not_utf8(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_bytes(b"To be \xff or not")
    code, _, err = run_cli(["sample", "init:tiny", "--prompt-file", str(prompt)], capsys)
    assert code == 2 and err.startswith(f"error: --prompt-file {prompt}: not UTF-8 text (byte 6)")
