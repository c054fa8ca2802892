"""Shared fixtures: small fp32 CPU models, seeded, and a tiny prepared corpus. Plain helpers
shared by several test modules (a training config, a run built from parts, the CLI) are in
helpers.py."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from gpt2repro.data.prepare import prepare_dataset
from gpt2repro.data.train_bpe import train_bpe
from gpt2repro.model import GPT, GPTConfig


@pytest.fixture
def tiny_config() -> GPTConfig:
    return GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32, pad_vocab_to=64)


@pytest.fixture
def tiny_model(tiny_config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


WORDS = [
    "the",
    "king",
    "queen",
    "lord",
    "sword",
    "crown",
    "night",
    "day",
    "love",
    "death",
    "war",
    "peace",
    "speak",
    "hear",
    "fair",
    "foul",
]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A prepared dataset of random 'sentences' with a 300-token BPE."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    texts = root / "texts"
    texts.mkdir()
    for i in range(60):
        words = [rng.choice(WORDS) for _ in range(300)]
        (texts / f"doc{i:03d}.txt").write_text(" ".join(words) + ".\n")
    tok = train_bpe(sorted(texts.glob("*.txt")), 300, root / "tok.json", show_progress=False)
    data_dir = prepare_dataset(
        "files",
        root / "data",
        tok.spec,
        paths=[str(texts / "*.txt")],
        out_name="tiny",
        val_fraction=0.1,
        workers=1,
        progress=False,
    )
    return SimpleNamespace(root=root, tokenizer=tok.spec, data_dir=data_dir)
