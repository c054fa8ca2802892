"""Configs and presets: every preset validates; bad settings are reported together."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpt2repro.config import TrainConfig
from gpt2repro.presets import DEFAULT_TRAIN_PRESET, TRAIN_PRESETS, train_preset


@pytest.mark.parametrize("name", list(TRAIN_PRESETS))
def test_every_preset_validates(name: str) -> None:
    cfg = train_preset(name)
    cfg.validate(world_size=1)
    assert cfg.batch.seq_len <= cfg.model.block_size


def test_documented_recipes() -> None:
    owt = train_preset("gpt2_124m_owt")
    assert owt.batch.tokens_per_step == 491_520 and owt.grad_accum_steps(1) == 40
    assert owt.grad_accum_steps(8) == 5
    assert (owt.optim.lr, owt.optim.min_lr, owt.optim.warmup_steps) == (6e-4, 6e-5, 2_000)
    assert owt.run.max_steps == 600_000 and not owt.model.bias and owt.model.dropout == 0.0
    assert (owt.optim.beta1, owt.optim.beta2, owt.optim.grad_clip) == (0.9, 0.95, 1.0)
    edu = train_preset("gpt2_124m_fineweb_edu")
    assert edu.batch.tokens_per_step == 524_288 and edu.grad_accum_steps(8) == 1
    assert (edu.optim.warmup_steps, edu.run.max_steps) == (715, 19_073)
    assert edu.model.padded_vocab_size == 50_304
    short = train_preset("gpt2_124m_fineweb_edu_0p8b")
    assert short.batch.micro_batch == 32 and short.run.max_steps * 524_288 >= 0.8e9
    bpe = train_preset("gpt2_124m_owt_custom_bpe")
    assert bpe.data.tokenizer == "train:50257" and bpe.batch.tokens_per_step == 480 * 1024
    assert (bpe.optim.warmup_steps, bpe.optim.min_lr) == (1_000, 1e-4)
    ts = train_preset("gpt2_124m_tinystories")
    assert (
        ts.grad_accum_steps(1) == 8 and ts.optim.weight_decay == 0.001 and ts.run.max_steps == 3_000
    )


def test_indivisible_batch_is_a_clear_error() -> None:
    cfg = TrainConfig()
    with pytest.raises(ValueError, match="not a multiple of micro_batch"):
        cfg.grad_accum_steps(world_size=3)


def test_validation_collects_every_problem() -> None:
    cfg = TrainConfig()
    cfg.batch.seq_len = 4096
    cfg.optim.min_lr = 1.0
    cfg.run.dtype = "fp8"
    with pytest.raises(ValueError) as err:
        cfg.validate()
    msg = str(err.value)
    assert "seq_len=4096" in msg and "min_lr" in msg and "fp8" in msg


@pytest.mark.parametrize("field", ["micro_batch", "seq_len", "tokens_per_step"])
def test_zero_batch_sizes_are_a_validation_error(field: str) -> None:
    cfg = TrainConfig()
    setattr(cfg.batch, field, 0)
    with pytest.raises(ValueError, match=rf"batch\.{field}=0 must be >= 1"):
        cfg.validate()


def test_nonsense_values_are_rejected(tmp_path: Path) -> None:
    cfg = TrainConfig()
    cfg.run.max_minutes = -1
    cfg.eval.interval, cfg.checkpoint.interval = -1, -5
    cfg.eval.val_tokens = 0
    cfg.data.tokenizer = "train:abc"
    cfg.checkpoint.resume = str(tmp_path / "nonexistent")
    cfg.eval.hellaswag, cfg.eval.hellaswag_path = True, tmp_path / "nope.jsonl"
    with pytest.raises(ValueError) as err:
        cfg.validate()
    msg = str(err.value)
    for needle in (
        "run.max_minutes=-1 must be positive",
        "eval.interval=-1, checkpoint.interval=-5 must be >= 0",
        "eval.val_tokens=0 must be >= 1 (and at least batch.seq_len x world size)",
        "data.tokenizer='train:abc'",
        "checkpoint.resume=",
        "nope.jsonl",
    ):
        assert needle in msg, needle


def test_tokenizer_spec_is_checked(tmp_path: Path) -> None:
    cfg = TrainConfig()
    for good in ("gpt2", "train:4096"):
        cfg.data.tokenizer = good
        cfg.validate()
    for bad in ("train:12", "gtp2", str(tmp_path / "missing.json")):
        cfg.data.tokenizer = bad
        with pytest.raises(ValueError, match=r"data\.tokenizer"):
            cfg.validate()


def test_warmup_longer_than_the_run_warns() -> None:
    cfg = TrainConfig()
    cfg.run.max_steps, cfg.optim.warmup_steps = 100, 100
    assert cfg.warnings() == []  # the last step reaches the peak
    cfg.optim.warmup_steps = 101
    (note,) = cfg.warnings()
    assert "never reaches its peak" in note
    cfg.validate()  # a warning, not an error


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="Unknown training preset 'gpt5'"):
        train_preset("gpt5")


@pytest.mark.parametrize(
    ("field", "value"), [("beta1", 1.5), ("beta2", -0.1), ("weight_decay", -0.1), ("lr", -1.0)]
)
def test_optimizer_values_torch_rejects_are_config_errors(field: str, value: float) -> None:
    """Reported with every other problem before start-up, not by torch.optim.AdamW after it."""
    cfg = TrainConfig()
    setattr(cfg.optim, field, value)
    o = cfg.optim
    with pytest.raises(ValueError, match="Invalid"):  # the reference: torch refuses it too
        torch.optim.AdamW([torch.zeros(1)], lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)  # fmt: skip
    with pytest.raises(ValueError, match=rf"Invalid training config: .*optim\.{field}\W+{value}"):
        cfg.validate()


def test_eps_grad_clip_and_sample_tokens_are_checked() -> None:
    cfg = TrainConfig()
    cfg.optim.eps, cfg.optim.grad_clip, cfg.eval.sample_tokens = 0.0, -1.0, 0
    with pytest.raises(ValueError) as err:
        cfg.validate()
    msg = str(err.value)
    for needle in ("optim.eps=0.0 must be positive", "optim.grad_clip=-1.0 must be >= 0",
                   "eval.sample_tokens=0 must be >= 1"):  # fmt: skip
        assert needle in msg, needle


def test_the_cpu_finetune_continues_the_default_run() -> None:
    """The README's `gpt2repro train && gpt2repro train --preset finetune_shakespeare_cpu`."""
    default, finetune = train_preset(DEFAULT_TRAIN_PRESET), train_preset("finetune_shakespeare_cpu")
    assert finetune.init.source == str(default.run.out_dir)
    assert finetune.model == default.model and finetune.data == default.data
