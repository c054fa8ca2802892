"""Issue 18 end to end: a manifest whose counts disagree with its shards stops `eval` and
`train` instead of scaling bits per byte; `data verify` reports every header field and the
byte count; a dataset given by path works, and anything else there says what is expected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import assert_user_error, run_cli, train_config

import gpt2repro.training.loop as train_module
from gpt2repro.checkpoint import save_checkpoint
from gpt2repro.data import verify
from gpt2repro.data.manifest import read_manifest
from gpt2repro.data.prepare import prepare_dataset
from gpt2repro.data.train_bpe import train_bpe
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import EOT, load_tokenizer, valid_utf8

# The documents where a byte recount could go wrong: multi-byte characters, CRLF, the
# literal "<|endoftext|>" (ordinary text, not the separator), an empty document, and in
# JSON lone surrogates, which prepare replaces by U+FFFD before counting and tokenizing.
DOCS = [
    "Fair is foul, and foul is fair:\r\nHover through the fog and filthy air.\r\n",
    "Unicode: café, naïve, 日本語, emoji 🎭 and a tab\tend",
    f"This document mentions {EOT} in its text; that is not a boundary.",
    "",
    "lone \ud800 surrogate, another \udfff, and a pair \ud83c\udfad",
    f"{EOT}\udc80{EOT}",
] + [f"document {i}: the quick brown fox, ünïcödé {i * 7}" for i in range(20)]


def write_jsonl(path: Path) -> Path:
    # json.dumps escapes lone surrogates as \\udXXX, as real JSON corpora hold them.
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    return path


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe"])
def test_the_byte_recount_equals_what_prepare_counted(tmp_path: Path, tokenizer: str) -> None:
    corpus = write_jsonl(tmp_path / "docs.jsonl")
    spec = "gpt2"
    if tokenizer == "bpe":
        spec = train_bpe([corpus], 300, tmp_path / "tok.json", show_progress=False).spec
    data = prepare_dataset(
        "files", tmp_path / "data", spec, paths=[str(corpus)], out_name="edge",
        shard_tokens=40, val_fraction=0.3, workers=1, progress=False,
    )  # fmt: skip
    manifest = read_manifest(data)
    # The documents as prepare sees them (lone surrogates replaced), counted directly.
    total = sum(len(valid_utf8(d).encode("utf-8")) for d in DOCS)
    assert sum(manifest["splits"][s]["bytes"] for s in ("train", "val")) == total
    for split in ("train", "val"):
        info = manifest["splits"][split]
        assert len(info["shards"]) > 1
        assert verify.check_split_counts(data, split)["bytes"] == info["bytes"]
    assert verify.verify_dataset(data)["ok"]


def damaged_copy(data_dir: Path, to: Path, field: str) -> Path:
    """A copy of the dataset whose manifest claims twice the val split's `field`."""
    copy = Path(shutil.copytree(data_dir, to / data_dir.name))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["splits"]["val"][field] *= 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


@pytest.fixture(scope="module")
def checkpoint(corpus: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=1, n_head=2, n_embd=32))
    path = tmp_path_factory.mktemp("run") / "checkpoints" / "step_000001"
    meta = {"step": 1, "train_state": {"tokens": 256}}
    return save_checkpoint(path, model, load_tokenizer(corpus.tokenizer), meta)


def eval_val(checkpoint: Path, data: str, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple:
    args = ["eval", str(checkpoint), "--tasks", "val", "--data", data, "--seq-len", "32"]
    return run_cli([*args, "--device", "cpu", "--dtype", "fp32", "--out", str(out)], capsys)


@pytest.mark.parametrize("field", ["tokens", "bytes"])
def test_eval_stops_on_a_wrong_manifest_count_instead_of_scaling_bpb(
    corpus: SimpleNamespace,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    field: str,
) -> None:
    good = Path(shutil.copytree(corpus.data_dir, tmp_path / "good" / corpus.data_dir.name))
    code, _, err = eval_val(checkpoint, str(good), tmp_path / "good.json", capsys)
    assert code == 0, err  # the dataset is fine as prepared, given by absolute path
    bad = damaged_copy(corpus.data_dir, tmp_path / "bad", field)
    code, _, err = eval_val(checkpoint, str(bad), tmp_path / "bad.json", capsys)
    assert_user_error(code, err, f"{bad} does not match its manifest", "split 'val'")
    assert f"`gpt2repro data verify {bad}`" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad.json").exists()


def test_training_refuses_a_wrong_val_token_count_at_start(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    bad = damaged_copy(corpus.data_dir, tmp_path / "data", "tokens")
    cfg = train_config(SimpleNamespace(**{**vars(corpus), "data_dir": bad}), tmp_path / "run", 4)
    with pytest.raises(ValueError, match=rf"split 'val' lists shards with .*data verify {bad}"):
        train_module.train(cfg)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # before the first step


def test_training_with_a_wrong_byte_count_stops_before_step_1(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    bad = damaged_copy(corpus.data_dir, tmp_path / "data", "bytes")
    cfg = train_config(SimpleNamespace(**{**vars(corpus), "data_dir": bad}), tmp_path / "run", 4)
    with pytest.raises(ValueError, match=rf"UTF-8 bytes.*data verify {bad}"):
        train_module.train(cfg)
    # Refused while setting up: no step ran, so no bits per byte was ever logged.
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def patched(data_dir: Path, to: Path, offset: int, value: bytes) -> Path:
    copy = Path(shutil.copytree(data_dir, to / data_dir.name))
    raw = bytearray((copy / "val_000000.bin").read_bytes())
    raw[offset : offset + len(value)] = value
    (copy / "val_000000.bin").write_bytes(bytes(raw))
    return copy


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("bytes", "split 'val' says its documents are"),
        ("eot", "val_000000.bin: end-of-text id 7 in the header, 0 in the manifest"),
        ("reserved", "val_000000.bin: header byte 150 is 0x2a"),
    ],
)
def test_data_verify_reports_the_byte_count_and_every_header_field(
    corpus: SimpleNamespace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    problem: str,
) -> None:
    if damage == "bytes":
        data = damaged_copy(corpus.data_dir, tmp_path, "bytes")
    elif damage == "eot":
        data = patched(corpus.data_dir, tmp_path, 36, (7).to_bytes(4, "little"))
    else:
        data = patched(corpus.data_dir, tmp_path, 150, b"\x2a")
    code, out, err = run_cli(["data", "verify", str(data)], capsys)
    assert_user_error(code, err, f"{data} failed verification", problem, "--overwrite")
    assert "OK" not in out


def train_args(dataset: Path, tmp_path: Path, tokenizer: str) -> list[str]:
    return [
        "train", "--data.dataset", str(dataset), "--data.tokenizer", tokenizer,
        "--data.data-root", str(tmp_path / "root"), "--run.device", "cpu",
        "--run.out-dir", str(tmp_path / "run"), "--run.max-steps", "1",
    ]  # fmt: skip


@pytest.mark.parametrize("kind", ["file", "empty folder", "missing"])
def test_a_path_that_is_no_dataset_is_one_error_line_for_train_and_eval(
    corpus: SimpleNamespace,
    checkpoint: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
) -> None:
    target = tmp_path / {"file": "mine.txt", "empty folder": "mine", "missing": "nowhere"}[kind]
    if kind == "file":
        target.write_text("some text")
    elif kind == "empty folder":
        target.mkdir()
    code, _, err = run_cli(train_args(target, tmp_path, corpus.tokenizer), capsys)
    assert_user_error(code, err, str(target))
    if kind == "empty folder":
        assert "is an empty folder" in err and "manifest.json" in err, err
    code, _, err = eval_val(checkpoint, str(target), tmp_path / "out.json", capsys)
    assert_user_error(code, err, str(target), "gpt2repro prepare files")
    if kind != "missing":
        assert "a prepared dataset's folder (one holding manifest.json)" in err, err
