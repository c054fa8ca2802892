"""Shared fixtures: small fp32 CPU models, seeded."""

from __future__ import annotations

import pytest
import torch

from gpt2repro.model import GPT, GPTConfig


@pytest.fixture
def tiny_config() -> GPTConfig:
    return GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32, pad_vocab_to=64)


@pytest.fixture
def tiny_model(tiny_config: GPTConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()
