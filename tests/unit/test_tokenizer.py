"""Tokenizers against references: GPT-2 against an independent encoder.py-style BPE and
tiktoken; the trained byte-level BPE against its own save/load and round-trip contracts."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2repro import assets
from gpt2repro.data.train_bpe import train_bpe
from gpt2repro.tokenizer import (
    EOT,
    MIN_BPE_VOCAB_SIZE,
    ByteBPETokenizer,
    GPT2Tokenizer,
    Tokenizer,
    load_tokenizer,
    train_bpe_from_texts,
)

from .gpt2_reference_bpe import ReferenceGPT2

CORPUS = {
    "prose": "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
    "code": "def f(x: int) -> int:\n    return {\"a\": x ** 2}['a']  # comment\n\tif x != 0:\n\t\tpass\n",
    "cjk": "日本語のテキストと中文文本,한국어 텍스트도 있습니다。",
    "emoji": "I ❤️ 🦀 and 👩‍👩‍👧‍👦! 🇫🇷🏳️‍🌈",
    "combining": "cafe\u0301 n\u0303 Z\u0351\u0358a\u035c\u0360l\u0322g\u0337o",
    "rtl": "مرحبا بالعالم שלום עולם \u202eevil\u202c",
    "spaces": "a  b   c    d \n e\n\n\nf \t \t g\r\n\r\nh   ",
    "1000_spaces": " " * 1000 + "x" + " " * 1000,
    "mixed_ws": "\n \n\t\t \u00a0 \u3000\u2028x \u2029\x0b\x0c\x1c\x85  ",
    "numbers": "3.14159 1,000,000 0x1F 2024-01-01 ١٢٣ ⅷ ² 1e-9 -42",
    "contractions": "I'll don't we've they're she'd it's 'S 'LL O'Neil ''' 's's",
    "eot_literal": "end<|endoftext|>start <|endoftext|> <|endoftext|><|endoftext|>",
    "empty": "",
    "control": "\x00\x01\x7f\ufeff\ufffd\U0010ffff",
}


@pytest.fixture(scope="module")
def gpt2() -> GPT2Tokenizer:
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def reference() -> ReferenceGPT2:
    return ReferenceGPT2(assets.fetch(assets.GPT2_RANKS))


def test_gpt2_known_ids(gpt2: GPT2Tokenizer) -> None:
    assert gpt2.encode("Hello world") == [15496, 995]
    assert (gpt2.eot_id, gpt2.vocab_size) == (50256, 50257)
    assert gpt2.encoding.n_vocab == 50257
    assert gpt2.identifier == gpt2.spec == "gpt2"
    assert isinstance(gpt2, Tokenizer)


@pytest.mark.parametrize("name", list(CORPUS))
def test_gpt2_matches_reference(name: str, gpt2: GPT2Tokenizer, reference: ReferenceGPT2) -> None:
    text = CORPUS[name]
    for allow_special in (False, True):
        ids = gpt2.encode(text, allow_special=allow_special)
        assert ids == reference.encode(text, allow_special=allow_special)
        assert gpt2.decode(ids) == text == reference.decode(ids)


def test_gpt2_endoftext_only_special_when_allowed(gpt2: GPT2Tokenizer) -> None:
    assert gpt2.encode(EOT, allow_special=True) == [50256]
    ordinary = gpt2.encode(EOT)
    assert 50256 not in ordinary and len(ordinary) > 1
    assert gpt2.decode(ordinary) == gpt2.decode([50256]) == EOT
    texts = [CORPUS["eot_literal"], "x", ""]
    for allow in (False, True):
        assert gpt2.encode_batch(texts, allow_special=allow, num_threads=2) == [
            gpt2.encode(t, allow_special=allow) for t in texts
        ]


def test_gpt2_decode_partial_utf8_replaces(gpt2: GPT2Tokenizer) -> None:
    ids = gpt2.encode("🦀")
    assert len(ids) > 1
    assert "\ufffd" in gpt2.decode(ids[:1])


# Whitespace-heavy text exercises the lookahead in GPT-2's `\s+(?!\S)` rule.
TRICKY = st.text(alphabet=st.sampled_from(list(" \t\n\r\u00a0\u3000as'1é😀<|>")), max_size=40)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=60) | TRICKY)
def test_gpt2_property_matches_reference(text: str) -> None:
    gpt2, reference = GPT2Tokenizer(), _reference()
    ids = gpt2.encode(text)
    assert ids == reference.encode(text)
    assert gpt2.decode(ids) == text


@functools.cache
def _reference() -> ReferenceGPT2:
    # Hypothesis refuses function-scoped fixtures in @given tests; share one instance.
    return ReferenceGPT2(assets.fetch(assets.GPT2_RANKS))


R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"


def _tiktoken_gpt2(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> tiktoken.Encoding:
    """tiktoken's `gpt2` online; offline, tiktoken's `r50k_base` (the same ranks, regex and
    <|endoftext|>, per tiktoken) read from a cache seeded with our asset. tiktoken checks a
    cached file against the sha256 it pins for r50k_base and refetches on a mismatch, which
    fails offline: the reference stays tiktoken's, not ours."""
    # tiktoken downloads with no timeout; probe first so an offline run falls back at once.
    try:
        socket.create_connection(("openaipublic.blob.core.windows.net", 443), timeout=3).close()
        return tiktoken.get_encoding("gpt2")
    except OSError:
        pass
    read_file = tiktoken.load.read_file

    def offline(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise ConnectionError(f"offline, and {blobpath} is not in tiktoken's cache")
        return read_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    cache_key = hashlib.sha1(R50K_URL.encode()).hexdigest()  # tiktoken's cache naming
    shutil.copyfile(assets.fetch(assets.GPT2_RANKS), tmp_path / cache_key)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    from tiktoken_ext import openai_public

    # Build a fresh Encoding: tiktoken.get_encoding would reuse one cached in this process.
    return tiktoken.Encoding(**openai_public.r50k_base())


def test_gpt2_matches_tiktoken(
    gpt2: GPT2Tokenizer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    official = _tiktoken_gpt2(monkeypatch, tmp_path)
    rng = random.Random(0)
    extra = ["".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(50)) for _ in range(200)]
    for text in [*CORPUS.values(), *extra]:
        assert gpt2.encode(text) == official.encode_ordinary(text)
        assert gpt2.encode(text, allow_special=True) == official.encode(text, allowed_special="all")
    assert official.n_vocab == gpt2.vocab_size and official.eot_token == gpt2.eot_id


def test_lone_surrogates_encode_as_tiktoken_does(
    gpt2: GPT2Tokenizer, bpe: ByteBPETokenizer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Bad UTF-8 in argv (surrogateescape) or JSON's "\ud800": tiktoken reads each lone
    # surrogate as U+FFFD; `tokenizers` raises TypeError unless we do the same.
    official = _tiktoken_gpt2(monkeypatch, tmp_path)
    texts = ["a\ud800b", "\udcff", "x \udfff\ud800 y", "ok"]
    replaced = ["a\ufffdb", "\ufffd", "x \ufffd\ufffd y", "ok"]
    for text, plain in zip(texts, replaced, strict=True):
        assert gpt2.encode(text) == official.encode_ordinary(text) == gpt2.encode(plain)
        assert bpe.encode(text) == bpe.encode(plain)
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in replaced]
    trained = train_bpe_from_texts(
        ["a\ud800b " * 20, "more text here " * 20], 270, tmp_path / "s.json"
    )
    assert trained.decode(trained.encode("a\ud800b")) == "a\ufffdb"


def test_train_bpe_refuses_a_corpus_without_text(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="No text to train the BPE on"):
        train_bpe([tmp_path / "empty.txt"], 300, tmp_path / "t.json", show_progress=False)
    assert not (tmp_path / "t.json").exists()


def test_tiktoken_reference_rejects_other_ranks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The offline reference is only a reference if tiktoken's pinned hash guards it.
    cache_key = hashlib.sha1(R50K_URL.encode()).hexdigest()
    ranks = assets.fetch(assets.GPT2_RANKS).read_bytes()
    (tmp_path / cache_key).write_bytes(ranks.replace(b" 0\n", b" 1\n", 1))
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", lambda blobpath: b"")
    from tiktoken_ext import openai_public

    with pytest.raises(ValueError, match="Hash mismatch"):
        openai_public.r50k_base()


def test_gpt2_nothing_at_import_or_construction(tmp_path: Path) -> None:
    code = "import gpt2repro.tokenizer as t; g = t.GPT2Tokenizer(); print(g.identifier, g.eot_id)"
    env = {**os.environ, "GPT2REPRO_CACHE": str(tmp_path / "cache")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["gpt2", "50256"]
    assert not (tmp_path / "cache").exists()


# ---- trained byte-level BPE ----


def _write_corpus(folder: Path) -> list[Path]:
    rng = random.Random(1234)
    words = [
        "the",
        "of",
        "and",
        "to",
        "in",
        "is",
        "was",
        "that",
        "for",
        "on",
        "with",
        "as",
        "his",
        "her",
        "they",
        "at",
        "by",
        "it",
        "from",
        "but",
    ]
    words += [
        "tokenizer",
        "byte",
        "pair",
        "encoding",
        "merge",
        "vocabulary",
        "日本",
        "🦀",
        "café",
        "naïve",
        "don't",
    ]
    files = []
    for i in range(2):
        lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(400)]
        path = folder / f"part{i}.txt"
        path.write_text("\n".join(lines) + f"\n{EOT}\n", encoding="utf-8")
        files.append(path)
    return files


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> ByteBPETokenizer:
    folder = tmp_path_factory.mktemp("bpe")
    return train_bpe(
        _write_corpus(folder), 400, folder / "tok" / "tokenizer.json", show_progress=False
    )


def test_bpe_save_load_is_stable(bpe: ByteBPETokenizer) -> None:
    path = Path(bpe.spec)
    assert path.is_absolute() and path.is_file()
    assert MIN_BPE_VOCAB_SIZE < bpe.vocab_size <= 400
    assert bpe.identifier.startswith("bpe-") and len(bpe.identifier) == 4 + 16
    loaded = load_tokenizer(bpe.spec)
    assert isinstance(loaded, ByteBPETokenizer) and isinstance(loaded, Tokenizer)
    assert (loaded.identifier, loaded.eot_id, loaded.vocab_size, loaded.spec) == (
        bpe.identifier,
        bpe.eot_id,
        bpe.vocab_size,
        bpe.spec,
    )
    text = "the tokenizer was naïve about 🦀 café, don't you think?\n" + CORPUS["cjk"]
    assert loaded.encode(text) == bpe.encode(text)
    assert len(bpe.encode("the tokenizer")) < len(b"the tokenizer")  # it learned merges
    # Re-indenting the JSON must not change what the ids mean, nor the identifier.
    pretty = path.with_name("pretty.json")
    pretty.write_text(json.dumps(json.loads(path.read_text()), indent=4), encoding="utf-8")
    assert ByteBPETokenizer.load(pretty).identifier == bpe.identifier


def test_bpe_endoftext_only_special_when_allowed(bpe: ByteBPETokenizer) -> None:
    text = f"a{EOT}b"
    special = bpe.encode(text, allow_special=True)
    ordinary = bpe.encode(text)
    assert special.count(bpe.eot_id) == 1
    assert bpe.eot_id not in ordinary
    assert bpe.decode(special) == bpe.decode(ordinary) == text
    texts = [text, "", "plain"]
    for allow in (False, True):
        assert bpe.encode_batch(texts, allow_special=allow) == [
            bpe.encode(t, allow_special=allow) for t in texts
        ]


def test_bpe_decode_partial_utf8_replaces(bpe: ByteBPETokenizer) -> None:
    ids = bpe.encode("\U0001f9ea")  # a test tube: not in the corpus, so split within its bytes
    assert len(ids) > 1
    assert "\ufffd" in bpe.decode(ids[:1])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(text=st.text(max_size=80) | TRICKY)
def test_bpe_property_round_trip(bpe: ByteBPETokenizer, text: str) -> None:
    assert bpe.decode(bpe.encode(text)) == text
    assert bpe.decode(bpe.encode(text, allow_special=True)) == text


def test_train_bpe_rejects_bad_inputs(tmp_path: Path) -> None:
    good = _write_corpus(tmp_path)[0]
    out = tmp_path / "t.json"
    with pytest.raises(FileNotFoundError, match=r"missing\.txt"):
        train_bpe([good, tmp_path / "missing.txt"], 400, out)
    with pytest.raises(ValueError, match=f"at least {MIN_BPE_VOCAB_SIZE}"):
        train_bpe([good], 257, out)
    with pytest.raises(ValueError, match="no training files"):
        train_bpe([], 400, out)
    with pytest.raises(FileNotFoundError, match=r"missing\.txt.*at least"):  # all problems at once
        train_bpe([tmp_path / "missing.txt"], 257, out)
    assert not out.exists()


def test_train_bpe_reads_jsonl_records_not_their_syntax(tmp_path: Path) -> None:
    texts = [f"record {i} says hello to the world\n" for i in range(40)]
    records = tmp_path / "docs.jsonl"
    records.write_text("".join(json.dumps({"body": t}) + "\n" for t in texts))
    plain = tmp_path / "plain"
    plain.mkdir()
    for i, t in enumerate(texts):  # reference: the same documents as .txt files
        (plain / f"{i:02d}.txt").write_text(t)
    from_jsonl = train_bpe([records], 300, tmp_path / "a.json", text_field="body")
    from_txt = train_bpe([plain], 300, tmp_path / "b.json")
    assert from_jsonl.identifier == from_txt.identifier


def test_load_tokenizer_rejects_bad_specs(tmp_path: Path) -> None:
    assert isinstance(load_tokenizer("gpt2"), GPT2Tokenizer)
    with pytest.raises(ValueError, match="'gpt2'"):
        load_tokenizer("gpt3")
    with pytest.raises(FileNotFoundError, match="`gpt2repro tokenizer train "):
        load_tokenizer(str(tmp_path / "nope.json"))
    for content in ("", "{", '{"version": "1.0"}'):
        broken = tmp_path / "broken.json"
        broken.write_text(content)
        with pytest.raises(ValueError, match=f"{broken}: .*tokenizer .json"):
            load_tokenizer(str(broken))
    no_eot = tmp_path / "no_eot.json"
    no_eot.write_text(
        json.dumps(
            {
                "version": "1.0",
                "added_tokens": [],
                "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
            }
        )
    )
    with pytest.raises(ValueError, match=re.escape(f"no {EOT} token")):
        load_tokenizer(str(no_eot))
