"""Configs and presets: every preset validates; bad settings are reported together."""

from __future__ import annotations

import pytest

from gpt2repro.config import TrainConfig
from gpt2repro.presets import TRAIN_PRESETS, train_preset


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


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="Unknown training preset 'gpt5'"):
        train_preset("gpt5")
