"""Model shapes (GPTConfig), each a function named NAME_model, taken as `init:NAME`.

GPT-2's follow the GPT-2 paper (Radford et al., 2019, table 2) and Hugging Face's `gpt2`,
`gpt2-medium`, `gpt2-large` and `gpt2-xl` configs. The tiny shapes exist for laptops and tests.
"""

from __future__ import annotations

from collections.abc import Callable

from gpt2repro.model import GPTConfig

MODEL_SUFFIX = "_model"


def gpt2_124m_model() -> GPTConfig:
    """GPT-2 small: 12 layers, 12 heads, 768 wide (124,439,808 parameters)."""
    return GPTConfig(n_layer=12, n_head=12, n_embd=768)


def gpt2_350m_model() -> GPTConfig:
    """GPT-2 medium: 24 layers, 16 heads, 1024 wide."""
    return GPTConfig(n_layer=24, n_head=16, n_embd=1024)


def gpt2_774m_model() -> GPTConfig:
    """GPT-2 large: 36 layers, 20 heads, 1280 wide."""
    return GPTConfig(n_layer=36, n_head=20, n_embd=1280)


def gpt2_1558m_model() -> GPTConfig:
    """GPT-2 XL: 48 layers, 25 heads, 1600 wide."""
    return GPTConfig(n_layer=48, n_head=25, n_embd=1600)


def tiny_model() -> GPTConfig:
    """2 layers, 2 heads, 64 wide, context 64: for tests and smoke runs."""
    return GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)


def mini_model() -> GPTConfig:
    """4 layers, 4 heads, 128 wide, context 256: trains in minutes on a laptop CPU."""
    return GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=256)


def small_model() -> GPTConfig:
    """6 layers, 6 heads, 384 wide, context 256: nanoGPT's Shakespeare shape."""
    return GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256)


MODEL_PRESETS: dict[str, Callable[[], GPTConfig]] = {
    f.__name__.removesuffix(MODEL_SUFFIX): f
    for f in (
        gpt2_124m_model,
        gpt2_350m_model,
        gpt2_774m_model,
        gpt2_1558m_model,
        tiny_model,
        mini_model,
        small_model,
    )
}
"""Model shapes by the name `init:NAME` takes: the function's name without `_model`."""
