"""GPT-2 architecture checks: parameter count, init, causality, padding, purity."""

from __future__ import annotations

import ast
import math
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

import gpt2repro.loss as loss_module
import gpt2repro.model as model_module
from gpt2repro.model import GPT, GPTConfig, KVCache, gelu_tanh
from gpt2repro.presets import (
    MODEL_PRESETS,
    TRAIN_PRESETS,
    gpt2_124m_model,
    model_preset,
    train_preset,
)


def test_124m_parameter_count_matches_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    ours = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, pad_vocab_to=1)).num_params()
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    assert ours == hf.num_parameters() == 124_439_808
    # Padding the embedding for speed must not change the reported count.
    with torch.device("meta"):
        padded = GPT(gpt2_124m_model())
    assert padded.config.padded_vocab_size == 50304
    assert padded.num_params() == 124_439_808


def test_initial_loss_is_uniform_for_narrow_model() -> None:
    # With n_embd=64 the initial logits have std 0.02*sqrt(64)=0.16, so the loss is ~ln(V).
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=128))
    x = torch.randint(0, 50257, (4, 128))
    y = torch.randint(0, 50257, (4, 128))
    assert abs(model(x, y).item() - math.log(50257)) < 0.1


def test_initial_loss_of_124m_matches_closed_form() -> None:
    # Logits are ln_f(x) @ wte.T with unit-variance features and N(0, 0.02) rows, so they are
    # ~N(0, s^2) with s^2 = 768 * 0.02^2, and E[CE] = ln V + s^2 / 2 for large V.
    torch.manual_seed(0)
    model = GPT(gpt2_124m_model())
    x = torch.randint(0, 50257, (2, 128))
    y = torch.randint(0, 50257, (2, 128))
    expected = math.log(50257) + 768 * 0.02**2 / 2
    assert abs(model(x, y).item() - expected) < 0.05


def test_init_statistics(tiny_model: GPT) -> None:
    cfg = tiny_model.config
    for name, p in tiny_model.named_parameters():
        if name.endswith("bias"):
            assert torch.count_nonzero(p) == 0, name
    big = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256))
    proj = torch.cat([b.attn.c_proj.weight.flatten() for b in big.transformer.h])
    fc = torch.cat([b.mlp.c_fc.weight.flatten() for b in big.transformer.h])
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.03)
    assert fc.std().item() == pytest.approx(0.02, rel=0.03)
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    assert torch.count_nonzero(tiny_model.transformer.wte.weight[cfg.vocab_size :]) == 0


def test_future_tokens_never_change_earlier_logits(tiny_model: GPT) -> None:
    torch.manual_seed(1)
    x = torch.randint(0, 97, (3, 32))
    y = x.clone()
    y[:, 20:] = torch.randint(0, 97, (3, 12))
    assert torch.equal(tiny_model(x)[:, :20], tiny_model(y)[:, :20])
    assert not torch.equal(tiny_model(x)[:, 20:], tiny_model(y)[:, 20:])


def test_padded_rows_get_no_probability(tiny_model: GPT) -> None:
    logits = tiny_model(torch.randint(0, 97, (2, 8)))
    assert tiny_model.config.padded_vocab_size == 128
    assert logits.shape == (2, 8, 97)
    # A tensor of its own, not a view of padded logits: FSDP warns of view outputs.
    assert logits._base is None and logits.is_contiguous()
    loss = tiny_model(torch.randint(0, 97, (2, 8)), torch.randint(0, 97, (2, 8)))
    loss.backward()
    grad = tiny_model.transformer.wte.weight.grad
    assert grad is not None and torch.count_nonzero(grad[97:]) == 0


def test_ignore_index(tiny_model: GPT) -> None:
    x = torch.randint(0, 97, (1, 8))
    y = torch.randint(0, 97, (1, 8))
    masked = y.clone()
    masked[:, :4] = -1
    logits = tiny_model(x)
    ref = torch.nn.functional.cross_entropy(logits[0, 4:], y[0, 4:])
    torch.testing.assert_close(tiny_model(x, masked), ref)


def test_kv_cache_matches_full_forward(tiny_model: GPT) -> None:
    torch.manual_seed(2)
    x = torch.randint(0, 97, (2, 30))
    full = tiny_model(x)
    cache = KVCache(tiny_model.config, 2, 32, torch.device("cpu"), torch.float32)
    parts = [tiny_model(x[:, :11], cache=cache), tiny_model(x[:, 11:12], cache=cache)]
    parts.append(tiny_model(x[:, 12:30], cache=cache))  # a multi-token chunk after a prefix
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    assert cache.pos == 30


def test_context_overflow_is_an_error(tiny_model: GPT) -> None:
    with pytest.raises(ValueError, match="exceeds the model's context of 32"):
        tiny_model(torch.zeros(1, 33, dtype=torch.long))


def test_config_validation_names_every_problem() -> None:
    with pytest.raises(ValueError) as err:
        GPTConfig(n_embd=100, n_head=3, dropout=1.5)
    assert "n_embd=100" in str(err.value) and "dropout=1.5" in str(err.value)


def test_presets_build_and_validate() -> None:
    for name in MODEL_PRESETS:
        with torch.device("meta"):
            GPT(model_preset(name))
    with pytest.raises(ValueError, match="Unknown model preset 'nope'"):
        model_preset("nope")


def test_preset_names_follow_the_rule() -> None:
    """A model shape's function ends in _model and is typed without it (init:NAME); a
    training run's function is typed as it is named (--preset NAME). Either name given to
    the other namespace is answered with the right one."""
    for name, make in MODEL_PRESETS.items():
        assert make.__name__ == name + "_model", (name, make.__name__)
        assert isinstance(make(), GPTConfig), name
    for name, make_run in TRAIN_PRESETS.items():
        assert make_run.__name__ == name and not name.endswith("_model"), name
    with pytest.raises(ValueError, match="use init:gpt2_124m"):
        model_preset("gpt2_124m_model")
    with pytest.raises(ValueError, match="'gpt2_124m_owt' is a training preset"):
        model_preset("gpt2_124m_owt")
    with pytest.raises(ValueError, match=r"a model shape \(init:tiny\)"):
        train_preset("tiny")


def test_meta_device_build_then_init() -> None:
    with torch.device("meta"):
        model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=50))
    model.to_empty(device="cpu")
    model.lm_head.weight = model.transformer.wte.weight
    model.init_weights()
    assert torch.isfinite(model(torch.zeros(1, 4, dtype=torch.long))).all()


@pytest.mark.parametrize("module", [model_module, loss_module])
def test_model_modules_import_only_torch_and_stdlib(module: ModuleType) -> None:
    tree = ast.parse(Path(str(module.__file__)).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module)
    roots = {r.split(".")[0] if r != "gpt2repro.loss" else r for r in roots}
    allowed = {"torch", "math", "dataclasses", "__future__", "typing", "gpt2repro.loss"}
    assert roots <= allowed, roots - allowed


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_gelu_equals_the_tanh_approximation(dtype: torch.dtype) -> None:
    # Compiled, gelu_tanh takes its sigmoid form; value and gradient must match PyTorch's
    # tanh-approximate GELU (what transformers' "gelu_new" computes) up to rounding.
    x = (torch.randn(4096) * 4).to(dtype).requires_grad_(True)
    ref = F.gelu(x, approximate="tanh")
    (ref_grad,) = torch.autograd.grad(ref.float().square().sum(), x)
    compiled = torch.compile(gelu_tanh)(x)
    (grad,) = torch.autograd.grad(compiled.float().square().sum(), x)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 1e-2}
    torch.testing.assert_close(compiled, ref, **tol)
    torch.testing.assert_close(grad, ref_grad, **tol)
