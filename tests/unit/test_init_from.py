"""`training.init_from`: a fine-tune's config takes its source's architecture and tokenizer,
refuses every chosen flag against it in one message, and crops the position table."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gpt2repro.config import InitConfig, TrainConfig
from gpt2repro.model import GPT
from gpt2repro.presets import train_preset
from gpt2repro.training.init_from import adopt_source, load_source_weights

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny GPT2LMHeadModel with GPT-2's vocabulary, saved as transformers does."""
    out = tmp_path_factory.mktemp("hf") / "model"
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(out)
    return out


def fine_tune(source: Path, **model: object) -> tuple[TrainConfig, TrainConfig]:
    """(preset, the preset with --model.init-from SOURCE and `model` fields set)."""
    preset = train_preset("shakespeare_cpu")
    cfg = replace(preset, init=InitConfig(str(source)), model=replace(preset.model, **model))
    return preset, cfg


def test_the_source_gives_shape_and_tokenizer_and_the_run_its_dropout(hf_dir: Path) -> None:
    preset, cfg = fine_tune(hf_dir, dropout=0.2)
    adopted = adopt_source(cfg, preset)
    m = adopted.model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.vocab_size) == (2, 2, 32, 64, 50257)
    assert m.padded_vocab_size == 50304  # 50,257 real rows, padded as in pretraining
    assert m.dropout == 0.2 and adopted.data.tokenizer == "gpt2"
    assert adopted.init.source == str(hf_dir)
    # Already adopted, checked against itself: nothing changes, nothing conflicts.
    assert adopt_source(adopted, adopted) == adopted


def test_every_chosen_conflict_is_named_once(hf_dir: Path) -> None:
    preset, cfg = fine_tune(hf_dir, n_head=8, n_embd=64, block_size=512, bias=False)
    with pytest.raises(ValueError) as e:
        adopt_source(cfg, preset)
    message = str(e.value)
    for needle in ("model.n_head=8 (the source has 2)", "model.n_embd=64 (the source has 32)"):
        assert needle in message
    assert "model.block_size=512 (the source has 64" in message
    assert "model.bias=False (the source has True)" in message


def test_a_chosen_value_equal_to_the_sources_is_no_conflict(hf_dir: Path) -> None:
    preset, cfg = fine_tune(hf_dir, n_layer=2, n_embd=32)
    assert adopt_source(cfg, preset).model.n_layer == 2


def test_a_smaller_block_size_crops_the_position_table(hf_dir: Path) -> None:
    preset, cfg = fine_tune(hf_dir, block_size=16)
    adopted = adopt_source(cfg, preset)
    assert adopted.model.block_size == 16
    gpt = GPT(adopted.model)
    load_source_weights(gpt, str(hf_dir))
    source = transformers.GPT2LMHeadModel.from_pretrained(hf_dir)
    assert torch.equal(gpt.transformer.wpe.weight, source.transformer.wpe.weight[:16])
    assert torch.equal(gpt.transformer.wte.weight[:50257], source.transformer.wte.weight)
    assert not gpt.transformer.wte.weight[50257:].any()  # padded rows stay inert


def test_weights_for_another_shape_are_refused(hf_dir: Path) -> None:
    preset, cfg = fine_tune(hf_dir)
    adopted = adopt_source(cfg, preset)
    with pytest.raises(ValueError, match="n_layer 2 != 3"):
        load_source_weights(GPT(replace(adopted.model, n_layer=3)), str(hf_dir))


def test_a_fresh_model_is_no_source() -> None:
    preset = train_preset("shakespeare_cpu")
    with pytest.raises(ValueError, match="trained model"):
        adopt_source(replace(preset, init=InitConfig("init:tiny")), preset)


def test_finetune_shakespeare_is_nanogpts_recipe() -> None:
    cfg = train_preset("finetune_shakespeare")
    assert cfg.init.source == "gpt2-xl" and cfg.data.dataset == "shakespeare"
    assert cfg.batch.tokens_per_step == 32_768 and cfg.grad_accum_steps(1) == 32
    assert cfg.batch.micro_batch == 1 and cfg.batch.seq_len == 1024
    # decay_lr=False: constant from the first step, no warmup.
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.optim.warmup_steps) == (3e-5, 3e-5, 0)
    assert (cfg.run.max_steps, cfg.eval.interval, cfg.eval.val_tokens) == (20, 5, 40 * 1024)
    assert cfg.model.dropout == 0.0 and cfg.model.n_layer == 48
