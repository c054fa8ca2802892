"""Checkpoint directories: bit-exact round trip, atomic writes, version checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt2repro.checkpoint import is_checkpoint, load_model, save_checkpoint
from gpt2repro.model import GPT
from gpt2repro.tokenizer import GPT2Tokenizer


def test_round_trip_is_bit_exact(tiny_model: GPT, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", tiny_model, GPT2Tokenizer(), meta={"step": 7})
    model, tok, meta = load_model(path)
    assert meta["step"] == 7 and tok.identifier == "gpt2"
    assert model.config == tiny_model.config
    ref = tiny_model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref[key]), key
    assert model.lm_head.weight is model.transformer.wte.weight


def test_compiled_model_saves_plain_names(tiny_model: GPT, tmp_path: Path) -> None:
    wrapped = torch.compile(tiny_model)  # only wraps; nothing compiles until called
    path = save_checkpoint(tmp_path / "ck", wrapped, GPT2Tokenizer())
    model, _, _ = load_model(path)
    assert torch.equal(model.transformer.wte.weight, tiny_model.transformer.wte.weight)


def test_interrupted_write_leaves_no_checkpoint(tiny_model: GPT, tmp_path: Path) -> None:
    def crash(_: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", tiny_model, GPT2Tokenizer(), extra_files={"x": crash})
    assert not (tmp_path / "ck").exists()
    assert list(tmp_path.iterdir()) == []


def test_wrong_version_and_not_a_checkpoint(tiny_model: GPT, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", tiny_model, GPT2Tokenizer())
    assert is_checkpoint(path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        load_model(path)
    with pytest.raises(ValueError, match="not a gpt2repro checkpoint"):
        load_model(tmp_path)
