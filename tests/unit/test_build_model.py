"""`build_model` (meta device -> to_empty -> init) against a model built directly on the
device after seeding, the way runs were built before the meta build."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from gpt2repro.distributed import DistInfo
from gpt2repro.model import GPT
from gpt2repro.presets import modern_model_options, shakespeare_cpu
from gpt2repro.runtime import seed_everything
from gpt2repro.training.setup import Runtime, build_model


@pytest.mark.parametrize("modern", [False, True], ids=["classic", "modern"])
def test_seed_gives_the_weights_of_a_direct_build(modern: bool) -> None:
    cfg = shakespeare_cpu()
    model = replace(cfg.model, n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=97)
    cfg = replace(cfg, model=modern_model_options(model) if modern else model)
    cfg = replace(cfg, run=replace(cfg.run, seed=7))

    seed_everything(7)
    direct = GPT(cfg.model)
    built = build_model(cfg, Runtime(torch.device("cpu"), "fp32", DistInfo()))

    want, got = direct.state_dict(), built.state_dict()
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    if cfg.model.tie_embeddings:
        assert built.lm_head.weight is built.transformer.wte.weight
    # The stream goes on from the same point too (dropout masks, data order after it).
    after = torch.rand(4)
    seed_everything(7)
    GPT(cfg.model)
    torch.testing.assert_close(torch.rand(4), after, rtol=0, atol=0)
