"""The command line: happy paths, and bad input that must give one clear message and no traceback."""

from __future__ import annotations

import ast
import errno
import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_user_error, run_cli

import gpt2repro
from gpt2repro.checkpoint import save_checkpoint
from gpt2repro.data.train_bpe import train_bpe
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import load_tokenizer


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


def imported_modules(path: Path) -> set[str]:
    """Every gpt2repro module `path` imports, at its top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
    return {name for name in names if name.startswith("gpt2repro.")}


def test_only_the_cli_imports_command_modules_and_benchmarks() -> None:
    """The commands modules and the benchmarks sit on top of the library: a benchmark may
    use any module, no library module a benchmark or a command, so no import cycle runs
    through them."""
    src = Path(gpt2repro.__file__).parent
    wrong = []
    for path in sorted(src.rglob("*.py")):
        where = path.relative_to(src).as_posix()
        for name in sorted(imported_modules(path)):
            a_command = name.endswith("commands") and where != "cli.py"
            a_bench = name.startswith("gpt2repro.bench") and not (
                where == "cli.py" or where.startswith("bench/")
            )
            if a_command or a_bench:
                wrong.append(f"{where} imports {name}")
    assert not wrong, wrong


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
        (["sample", "--temperature", "-1"], ["--temperature -1"]),
        (["tokenizer", "train", str(text_file), "--vocab-size", "10"], ["258"]),
        (["tokenizer", "train", str(tmp_path / "nope.txt")], ["nope.txt"]),
        (["tokenizer", "train", str(text_file), "--out", str(tmp_path / "t.txt")], ["*.json"]),
        (["frobnicate"], ["Unknown command 'frobnicate'"]),
        (["bench", "speed"], ["Unknown command 'bench speed'", "bench peak", "bench train"]),
    ]
    for args, needles in cases:
        code, _, err = run_cli(args, capsys)
        assert_user_error(code, err, *needles)


def test_a_dead_tokenizer_worker_is_one_line_with_the_way_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt2repro.data import prepare, workers

    def dying(*args: object, **kwargs: object) -> Iterator[object]:
        # What encode_stream raises when the pool breaks (tests/unit/test_data_workers.py)
        raise ChildProcessError(workers.WORKER_DIED)
        yield

    monkeypatch.setattr(prepare, "encode_stream", dying)
    (tmp_path / "a.txt").write_text("some text " * 50)
    args = ["prepare", "files", str(tmp_path / "a.txt"), "--name", "x"]
    code, _, err = run_cli([*args, "--data-dir", str(tmp_path / "data"), "--no-progress"], capsys)
    assert_user_error(code, err, "worker process died", "Re-run the same command")


@pytest.mark.parametrize(
    ("env", "needles"),
    [
        ({"WORLD_SIZE": "two"}, ["WORLD_SIZE='two' is not a whole number", "torchrun"]),
        ({"WORLD_SIZE": "2", "RANK": "0"}, ["MASTER_ADDR and MASTER_PORT are not set", "torchrun"]),
    ],
)
def test_a_bad_distributed_environment_is_one_line(
    env: dict[str, str], needles: list[str], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    code, _, err = run_cli(["train", "--dry-run"], capsys)
    assert_user_error(code, err, *needles)


def test_a_full_disk_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpt2repro import pretrained

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "hf"))

    monkeypatch.setattr(pretrained, "save_file", full)
    code, _, err = run_cli(["export", "init:tiny", str(tmp_path / "hf")], capsys)
    assert_user_error(code, err, "No space left on device")
    assert not (tmp_path / "hf").exists()


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
    # `$'\xff'` in bash reaches argv as a lone surrogate: encoded as U+FFFD, as tiktoken does
    args = ["tokenizer", "encode", "\udcff", "--tokenizer", str(out_file)]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads(out) == load_tokenizer(str(out_file)).encode("\ufffd")


def test_export_command_writes_hf_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(["export", "init:tiny", str(tmp_path / "hf")], capsys)
    assert code == 0, err
    assert (tmp_path / "hf" / "config.json").is_file()
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    code, _, err = run_cli(["sample", str(tmp_path / "hf"), "--max-new-tokens", "4"], capsys)
    assert code == 0, err


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> Path:
    """A gpt2repro checkpoint of a 1-layer model with GPT-2's tokenizer, inside a run directory."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=16)
    root = tmp_path / "run1" / "checkpoints"
    save_checkpoint(root / "step_000010", GPT(cfg), load_tokenizer("gpt2"), meta={"step": 10})
    return save_checkpoint(root / "best", GPT(cfg), load_tokenizer("gpt2"), meta={"step": 10})


def test_truncated_weights_name_the_file(
    tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = tmp_path / "hf"
    assert run_cli(["export", str(tiny_checkpoint), str(exported)], capsys)[0] == 0
    for model_dir in (tiny_checkpoint, exported):
        weights = model_dir / "model.safetensors"
        with open(weights, "r+b") as f:  # as `truncate -s 100`: cut inside the header
            f.truncate(100)
        for args in (["sample", str(model_dir)], ["export", str(model_dir), str(tmp_path / "o")]):
            code, _, err = run_cli(args, capsys)
            assert_user_error(code, err, str(weights), "corrupt or incomplete")
    code, _, err = run_cli(["sample", str(tiny_checkpoint)], capsys)
    assert "another checkpoint" in err


def test_run_directory_stands_for_its_best_checkpoint(
    tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tiny_checkpoint.parent.parent
    (run_dir / "config.json").write_text("{}")  # as train writes: not an HF config
    code, out, err = run_cli(["sample", str(run_dir), "--max-new-tokens", "2"], capsys)
    assert code == 0 and "--- sample 1/1 ---" in out, err
    assert f"using {tiny_checkpoint} (the run's best checkpoint)" in err
    shutil.rmtree(tiny_checkpoint)  # no best yet: the newest step stands for the run
    code, out, err = run_cli(["sample", str(run_dir), "--max-new-tokens", "2"], capsys)
    assert code == 0 and f"using {run_dir / 'checkpoints' / 'step_000010'}" in err, err
    shutil.rmtree(run_dir / "checkpoints" / "step_000010")
    code, _, err = run_cli(["sample", str(run_dir)], capsys)
    assert_user_error(code, err, "run directory with no checkpoint yet", "--checkpoint.interval")
    assert "model.safetensors" not in err


@pytest.mark.parametrize("content", ["", '{"model": ', "[1, 2]"])
def test_broken_tokenizer_file_is_named(
    content: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "tok.json"
    broken.write_text(content)
    code, _, err = run_cli(["tokenizer", "encode", "hi", "--tokenizer", str(broken)], capsys)
    assert_user_error(code, err, str(broken), "gpt2repro tokenizer train")
    missing = ["tokenizer", "encode", "hi", "--tokenizer", str(tmp_path / "no.json")]
    code, _, err = run_cli(missing, capsys)
    assert_user_error(code, err, "no.json", "gpt2repro tokenizer train")
    assert "train_bpe" not in err


def test_tokenizer_flag_replaces_a_damaged_stored_tokenizer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gpt2repro.data.train_bpe import train_bpe

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    tok = train_bpe([corpus], 300, tmp_path / "tok.json", show_progress=False)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    ckpt = save_checkpoint(tmp_path / "ckpt", GPT(cfg), tok, meta={"step": 1})
    stored = [p for p in ckpt.iterdir() if p.suffix == ".json" and p.name != "meta.json"]
    assert len(stored) == 1
    stored[0].write_text("")  # damaged copy inside the checkpoint
    code, _, err = run_cli(["sample", str(ckpt), "--max-new-tokens", "2"], capsys)
    assert_user_error(code, err, str(stored[0]))
    override = ["sample", str(ckpt), "--max-new-tokens", "2", "--tokenizer", tok.spec]
    code, out, err = run_cli(override, capsys)
    assert code == 0 and "--- sample 1/1 ---" in out, err


def test_export_overwrite_flag_and_file_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_dir = tmp_path / "hf"
    assert run_cli(["export", "init:tiny", str(out_dir), "--seed", "1"], capsys)[0] == 0
    first = (out_dir / "model.safetensors").read_bytes()
    # The target is checked before the model is loaded: a bad model is not reached.
    code, _, err = run_cli(["export", str(tmp_path / "no_model"), str(out_dir)], capsys)
    assert_user_error(code, err, str(out_dir), "--overwrite")
    assert "overwrite=True" not in err
    code, _, err = run_cli(
        ["export", "init:tiny", str(out_dir), "--seed", "2", "--overwrite"], capsys
    )
    assert code == 0, err
    assert (out_dir / "model.safetensors").read_bytes() != first
    a_file = tmp_path / "config.json"
    a_file.write_text("{}")
    for target in (a_file, a_file / "sub"):
        code, _, err = run_cli(["export", "init:tiny", str(target)], capsys)
        assert_user_error(code, err, f"{a_file} is a file")
        assert "Errno" not in err


def test_tokenizer_train_reads_folders_like_prepare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "txt"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("the cat sat on the mat\n" * 50)
    (folder / "sub" / "b.txt").write_text("a dog ran in the fog\n" * 50)
    (folder / "notes.md").write_text("not read: prepare reads .txt, .jsonl and .parquet only\n")
    from_folder, from_files = tmp_path / "folder.json", tmp_path / "files.json"
    code, _, err = run_cli(
        ["tokenizer", "train", str(folder), "--vocab-size", "270", "--out", str(from_folder)],
        capsys,
    )
    assert code == 0, err
    # Reference: the same files named one by one, in the order prepare sorts them.
    files = [str(folder / "a.txt"), str(folder / "sub" / "b.txt")]
    run_cli(["tokenizer", "train", *files, "--vocab-size", "270", "--out", str(from_files)], capsys)
    assert from_folder.read_text() == from_files.read_text()
    # An existing tokenizer is never replaced silently; a small text says it fell short.
    code, _, err = run_cli(["tokenizer", "train", str(folder), "--out", str(from_folder)], capsys)
    assert_user_error(code, err, f"{from_folder} exists", "--overwrite")
    code, out, err = run_cli(
        ["tokenizer", "train", str(folder), "--out", str(from_folder), "--overwrite"], capsys
    )
    assert code == 0, err
    assert "note: the text supports only" in out and "of the 50257 tokens" in out
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_cli(["tokenizer", "train", str(empty)], capsys)
    assert_user_error(code, err, f"directory {empty} holds no .txt")


def help_text(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code, out, err = run_cli([*args, "--help"], capsys)
    assert code == 0, err
    return out


def test_help_names_what_the_readme_names(capsys: pytest.CaptureFixture[str]) -> None:
    sample = help_text(["sample"], capsys)
    assert "[MODEL]" in sample and "[STR]" not in sample
    assert "--no-cache" in sample and "--no-no-cache" not in sample
    export = help_text(["export"], capsys)
    assert "MODEL OUT_DIR" in export and "--overwrite" in export and "STR PATH" not in export
    tokenizer_train = help_text(["tokenizer", "train"], capsys)
    assert "(default: )" not in tokenizer_train and "FILE [FILE ...]" in tokenizer_train
    options = help_text(["train"], capsys).split("options", 1)[1]  # after the description
    assert "--preset STR" in options and "--dry-run" in options and "--no-dry-run" not in options


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (None, 143)]
)
def test_train_stopped_by_a_signal_exits_128_plus_its_number(
    signum: int | None,
    code: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import gpt2repro.training.loop

    def stopped(cfg: object) -> SimpleNamespace:
        return SimpleNamespace(
            run_dir=tmp_path, final_val={}, checkpoint=None, stopped_by="signal", signal=signum
        )

    monkeypatch.setattr(gpt2repro.training.loop, "train", stopped)
    assert run_cli(["train"], capsys)[0] == code
