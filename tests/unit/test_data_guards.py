"""Guards on a prepared dataset's files (issue 18): every shard header field, the manifest's
counts against the shards, the byte count behind bits per byte, datasets given by path."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from gpt2repro.data import verify
from gpt2repro.data.loader import TokenLoader, eval_batches
from gpt2repro.data.locate import resolve_dataset
from gpt2repro.data.manifest import prepared_under_name, read_manifest
from gpt2repro.data.shards import ShardFormatError, read_header, write_shard
from gpt2repro.tokenizer import EOT, load_tokenizer, valid_utf8


@pytest.fixture
def copy(corpus: SimpleNamespace, tmp_path: Path) -> Path:
    """A copy of the tiny prepared dataset (300-token BPE) to damage."""
    return Path(shutil.copytree(corpus.data_dir, tmp_path / corpus.data_dir.name))


def edit_manifest(data_dir: Path, edit: Any) -> None:
    path = data_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def patch_header(path: Path, offset: int, fmt: str, value: int) -> None:
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(bytes(raw))


# --- shards.read_header: fields with a rule of their own --------------------------------


def _shard(tmp_path: Path) -> Path:
    path = tmp_path / "train_000000.bin"
    write_shard(path, np.arange(10), vocab_size=50257, eot_id=50256, tokenizer="gpt2")
    return path


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "problem"),
    [
        (104, "<B", 1, "header byte 104 is 0x01; bytes 104..255 must be zero"),
        (255, "<B", 7, "header byte 255 is 0x07"),
        (36, "<I", 50257, "end-of-text id 50257 is not below the vocabulary size 50257"),
        (24, "<Q", 70_000, "2-byte tokens cannot hold the ids of a vocabulary of 70000"),
        (24, "<Q", 0, "vocabulary size 0 is impossible"),
        (46, "<B", ord("x"), "bytes after its NUL padding"),  # "gpt2\0\0x"
        (41, "<B", 0xFF, "not UTF-8"),
    ],
)
def test_read_header_refuses_fields_outside_their_defined_values(
    tmp_path: Path, offset: int, fmt: str, value: int, problem: str
) -> None:
    path = _shard(tmp_path)
    patch_header(path, offset, fmt, value)
    with pytest.raises(ShardFormatError, match=problem) as e:
        read_header(path)
    assert str(e.value).startswith(f"{path}: ")


# --- the byte length of every id -----------------------------------------------------------

TEXTS = [
    "plain ascii words",
    "Unicode: café, naïve, 日本語, emoji 🎭\tand\r\nlines",
    f"a document that mentions {EOT} in its text",
    "lone surrogates \ud800 and \udfff become U+FFFD",
    "",
]


def test_byte_lengths_of_the_ids_add_up_to_the_texts_utf8_size(corpus: SimpleNamespace) -> None:
    for tok in (load_tokenizer("gpt2"), load_tokenizer(corpus.tokenizer)):
        lengths = verify.token_byte_lengths(tok)
        assert lengths.shape == (tok.vocab_size,) and lengths[tok.eot_id] == 0
        for text in TEXTS:
            clean = valid_utf8(text)  # what prepare tokenizes and counts
            ids = tok.encode(clean)
            assert int(lengths[ids].sum()) == len(clean.encode("utf-8")), (tok, text)


# --- what opening a split checks (training and evaluation) ---------------------------------

SHARD = "train_000000.bin"


def _eot_changed(data: Path) -> None:
    patch_header(data / SHARD, 36, "<I", 5)


def _reserved_set(data: Path) -> None:
    patch_header(data / SHARD, 200, "<B", 1)


def _entry_count(data: Path) -> None:
    edit_manifest(data, lambda m: m["splits"]["train"]["shards"][0].update(tokens=7))


def _entry_crc(data: Path) -> None:
    edit_manifest(data, lambda m: m["splits"]["train"]["shards"][0].update(crc32=12345))


def _split_total(data: Path) -> None:
    edit_manifest(
        data, lambda m: m["splits"]["train"].update(tokens=m["splits"]["train"]["tokens"] * 2)
    )


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_eot_changed, f"{SHARD}: end-of-text id 5 in the header, 0 in the manifest"),
        (_reserved_set, f"{SHARD}: header byte 200 is 0x01"),
        (_entry_count, f"{SHARD}: holds"),
        (_entry_crc, f"{SHARD}: CRC-32"),
        (_split_total, "split 'train' lists shards with"),
    ],
)
def test_opening_a_split_checks_every_header_field_and_the_manifest_counts(
    copy: Path, damage: Any, problem: str
) -> None:
    damage(copy)
    with pytest.raises(ValueError) as e:
        TokenLoader(copy, "train", 2, 8, prefetch=0)
    message = str(e.value)
    assert problem in message and f"gpt2repro data verify {copy}" in message, message
    assert "--overwrite" in message, message  # and how to re-create it


def test_a_missing_shard_is_one_sentence_without_a_double_period(copy: Path) -> None:
    (copy / "val_000000.bin").unlink()
    with pytest.raises(ValueError) as e:
        eval_batches(copy, "val", 2, 8, None)
    message = str(e.value)
    assert f"{copy / 'val_000000.bin'}: shard file is missing" in message, message
    assert ".." not in message.replace("...", ""), message
    # The bare reader's message too, which other callers (a resumed prepare) extend.
    with pytest.raises(FileNotFoundError) as bare:
        read_header(copy / "val_000000.bin")
    assert str(bare.value) == f"{copy / 'val_000000.bin'}: shard file is missing"


# --- check_split_counts: what bits per byte divides by -----------------------------------


def test_check_split_counts_returns_the_manifests_figures_when_they_hold(copy: Path) -> None:
    counts = verify.check_split_counts(copy, "val")
    info = read_manifest(copy)["splits"]["val"]
    assert counts == {k: info[k] for k in ("tokens", "documents", "bytes")}


@pytest.mark.parametrize("field", ["tokens", "bytes", "documents"])
def test_check_split_counts_refuses_a_wrong_count(copy: Path, field: str) -> None:
    edit_manifest(copy, lambda m: m["splits"]["val"].update({field: 2 * m["splits"]["val"][field]}))
    with pytest.raises(ValueError) as e:
        verify.check_split_counts(copy, "val")
    message = str(e.value)
    assert message.startswith(f"{copy} does not match its manifest: "), message
    assert "split 'val'" in message and f"`gpt2repro data verify {copy}`" in message, message


def test_check_split_counts_scans_once_until_the_dataset_changes(
    copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans: list[int] = []
    real_scan = verify._scan

    def counted(*args: Any, **kwargs: Any) -> verify.Scan:
        scans.append(1)
        return real_scan(*args, **kwargs)

    monkeypatch.setattr(verify, "_scan", counted)
    first = verify.check_split_counts(copy, "val")
    n = len(scans)
    assert n >= 1
    assert verify.check_split_counts(copy, "val") == first and len(scans) == n  # cached
    edit_manifest(copy, lambda m: m["splits"]["val"].update(bytes=m["splits"]["val"]["bytes"] + 1))
    with pytest.raises(ValueError, match="UTF-8 bytes"):  # a changed manifest is checked again
        verify.check_split_counts(copy, "val")


def test_check_split_counts_needs_the_datasets_tokenizer(copy: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere.json"
    spec = read_manifest(copy)["tokenizer"]["spec"]
    edit_manifest(copy, lambda m: m["tokenizer"].update(spec=str(tmp_path / "gone.json")))
    with pytest.raises(
        ValueError, match=r"cannot load its tokenizer .*gone\.json.*Put the tokenizer it was"
    ):
        verify.check_split_counts(copy, "val")
    with pytest.raises(ValueError, match=r"prepared with tokenizer bpe-\w+, not gpt2 \(gpt2\)"):
        verify.check_split_counts(copy, "val", load_tokenizer("gpt2"))
    shutil.copyfile(spec, moved)  # the same tokenizer, passed by the caller
    assert verify.check_split_counts(copy, "val", load_tokenizer(str(moved)))["bytes"] > 0


# --- a dataset given by path ---------------------------------------------------------------


def test_prepared_under_name_takes_an_absolute_or_relative_path(
    corpus: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = corpus.data_dir  # <root>/data/tiny-bpe-...
    plain = data.parent / "tiny"
    assert prepared_under_name(Path("elsewhere"), str(plain)) == [data]
    monkeypatch.chdir(data.parent.parent)
    assert prepared_under_name(Path("."), "data/tiny") == [Path("data") / data.name]
    assert prepared_under_name(Path("elsewhere"), str(data.parent / "nothing")) == []


def test_resolve_dataset_takes_a_dataset_folder_by_path(corpus: SimpleNamespace) -> None:
    data = corpus.data_dir
    assert resolve_dataset(str(data), Path("elsewhere"), corpus.tokenizer) == data


@pytest.mark.parametrize("kind", ["file", "empty folder", "folder of other files"])
def test_resolve_dataset_says_what_a_dataset_is_when_a_path_is_none(
    tmp_path: Path, kind: str
) -> None:
    target = tmp_path / "mine"
    if kind == "file":
        target = tmp_path / "mine.txt"
        target.write_text("some text")
    else:
        target.mkdir()
        if kind == "folder of other files":
            (target / "notes.txt").write_text("some text")
    with pytest.raises(FileNotFoundError) as e:
        resolve_dataset(str(target), tmp_path / "data")
    message = str(e.value)
    what = {"file": "is a file", "empty folder": "is an empty folder"}.get(kind, "without manifest")
    assert message.startswith(f"{target} ") and what in message, message
    assert "a prepared dataset's folder (one holding manifest.json)" in message, message
    assert "gpt2repro prepare files" in message and "--name mine" in message, message
