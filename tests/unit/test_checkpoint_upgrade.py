"""Checkpoints of the early format-version-1 layout load and resume: written here by hand as
the code of their time wrote them (a model config without the options of ffd9590, optimizer
groups without peak_lr, every GPU's CUDA generator in a list, no rng_per_rank)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from gpt2repro.checkpoint import load_model, read_meta, restore_weights
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.train_state import (
    load_train_state,
    restore_train_checkpoint,
    rng_state,
    set_rng_state,
    upgrade_state,
)
from gpt2repro.training.optimizer import set_lr

# GPTConfig's fields before ffd9590: the shape of a classic GPT-2 and nothing else.
EARLY_FIELDS = (
    "vocab_size",
    "block_size",
    "n_layer",
    "n_head",
    "n_embd",
    "dropout",
    "bias",
    "pad_vocab_to",
)


def early_optimizer(model: GPT) -> torch.optim.AdamW:
    """AdamW as training built it before ffd9590: two groups, no peak_lr."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-2)


def step(model: GPT, optimizer: torch.optim.Optimizer) -> None:
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    model(x, x).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def write_early_checkpoint(path: Path, model: GPT, optimizer: torch.optim.Optimizer) -> None:
    """meta.json, model.safetensors and train_state.pt in the early version-1 layout."""
    path.mkdir()
    config = {k: v for k, v in asdict(model.config).items() if k in EARLY_FIELDS}
    meta = {
        "format_version": 1,
        "model_config": config,
        "tokenizer": "gpt2",
        "tokenizer_identifier": "gpt2",
        "step": 1,
    }
    (path / "meta.json").write_text(json.dumps(meta, indent=2))
    weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(weights, str(path / "model.safetensors"))
    rng = rng_state()
    rng["cuda"] = [torch.full((4,), gpu) for gpu in range(2)]  # each visible GPU's, a list
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    state = {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(), "rng": rng}
    torch.save(state, path / "train_state.pt")


def test_an_early_checkpoint_loads_as_classic_gpt2(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32))
    write_early_checkpoint(tmp_path / "ck", original, early_optimizer(original))
    stored = json.loads((tmp_path / "ck" / "meta.json").read_text())["model_config"]
    assert "position" not in stored and "tie_embeddings" not in stored
    assert read_meta(tmp_path / "ck")["model_config"] == asdict(original.config)
    model, _, _ = load_model(tmp_path / "ck")
    assert model.config == original.config
    assert (model.config.position, model.config.norm, model.config.activation) == (
        "learned",
        "layernorm",
        "gelu",
    )
    assert model.lm_head.weight is model.transformer.wte.weight
    for key, value in original.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # A run with a modern option does not resume it as if it were that model.
    with pytest.raises(ValueError, match="position learned -> rope"):
        restore_weights(tmp_path / "ck", GPT(replace(original.config, position="rope")))


def test_an_early_training_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    """Restored into today's optimizer (groups with peak_lr), the next step equals the
    original's, and the schedule still sets each group's learning rate."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, n_embd=32)
    original = GPT(config).train()
    optimizer = early_optimizer(original)
    step(original, optimizer)
    write_early_checkpoint(tmp_path / "ck", original, optimizer)
    state = load_train_state(tmp_path / "ck")
    assert torch.equal(state["rng"]["cuda"], torch.full((4,), 0))  # one GPU's, upgraded

    model = GPT(config).train()
    restored = torch.optim.AdamW(
        [g | {"peak_lr": 1e-2} for g in early_optimizer(model).param_groups], lr=1e-2
    )
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    meta = restore_train_checkpoint(tmp_path / "ck", model, restored, scaler)
    assert meta["step"] == 1
    assert [g["peak_lr"] for g in restored.param_groups] == [1e-2, 1e-2]  # the run's
    for opt in (optimizer, restored):
        set_lr(opt, 5e-3, peak=1e-2)
    assert [g["lr"] for g in restored.param_groups] == [5e-3, 5e-3]
    step(original, optimizer)
    set_rng_state(state["rng"])
    step(model, restored)
    for (name, a), b in zip(
        original.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_the_old_cuda_generator_list_keeps_this_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    generators = [torch.full((4,), gpu) for gpu in range(8)]
    for current, kept in ((3, 3), (0, 0)):  # rank 3 of the saving node; a one-GPU machine
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda c=current: c)
        state = upgrade_state({"rng": {"cuda": list(generators)}})
        assert torch.equal(state["rng"]["cuda"], generators[kept])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 11)  # more GPUs than it saved
    per_rank = upgrade_state({"rng": {"cuda": generators}, "rng_per_rank": [{"cuda": generators}]})
    assert torch.equal(per_rank["rng_per_rank"][0]["cuda"], generators[7])


def test_a_newer_checkpoint_is_refused_naming_what_is_new(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=1, n_head=2, n_embd=32))
    write_early_checkpoint(tmp_path / "ck", model, early_optimizer(model))
    meta_file = tmp_path / "ck" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({**meta, "format_version": 2}))
    with pytest.raises(ValueError, match="format version 2, this gpt2repro reads 1"):
        read_meta(tmp_path / "ck")
    meta["model_config"]["n_kv_head"] = 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"model options \['n_kv_head'\] are unknown"):
        load_model(tmp_path / "ck")
