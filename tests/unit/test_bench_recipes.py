"""`bench recipes`: the time to target against its closed form, the ablation ending at the
modern recipe, and a whole small comparison run on a tiny corpus."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from gpt2repro.bench.recipes import ablation_steps, bench_recipes, plot_recipes, time_to_target
from gpt2repro.presets import train_preset


def test_time_to_target_interpolates_between_evaluations() -> None:
    curve = [(10.0, 3.0), (20.0, 2.5), (30.0, 2.0), (40.0, 1.9)]
    assert time_to_target(curve, 2.25) == pytest.approx(25.0)  # halfway from 2.5 to 2.0
    assert time_to_target(curve, 3.0) == 10.0
    assert time_to_target(curve, 3.5) == 10.0  # already there at the first evaluation
    assert time_to_target(curve, 1.95) == pytest.approx(35.0)
    assert time_to_target(curve, 1.0) is None


def test_ablation_adds_one_piece_at_a_time_and_ends_at_the_modern_recipe() -> None:
    classic, modern = train_preset("shakespeare_cpu"), train_preset("modern_shakespeare_cpu")
    steps = ablation_steps(classic, modern)
    assert steps[0][1] == classic
    last = steps[-1][1]
    assert last.model == modern.model and last.optim == modern.optim
    assert steps[1][1].optim.optimizer == "muon" and steps[1][1].optim.schedule == "cosine"
    assert steps[2][1].optim.schedule == "wsd" and steps[2][1].model == classic.model
    assert steps[3][1].model.position == "rope" and steps[3][1].model.norm == "layernorm"
    assert steps[4][1].model.qk_norm and steps[4][1].model.logit_softcap == 0.0


def tiny(corpus: SimpleNamespace, name: str):  # type: ignore[no-untyped-def]
    def make():  # type: ignore[no-untyped-def]
        cfg = train_preset(name)
        model = replace(cfg.model, n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=300)
        return replace(
            cfg,
            model=model,
            data=replace(
                cfg.data, dataset=str(corpus.data_dir), data_root=corpus.root / "data",
                tokenizer=corpus.tokenizer,
            ),
            batch=replace(cfg.batch, tokens_per_step=4 * 32, micro_batch=4, seq_len=32),
            run=replace(cfg.run, max_steps=16, dtype="fp32", max_minutes=None),
            optim=replace(cfg.optim, warmup_steps=2),
            log=replace(cfg.log, interval=7, tensorboard=False),
        )  # fmt: skip

    return make


def test_a_small_comparison_runs_end_to_end(
    corpus: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MFU's peak is measured for a second at every start: not what this test is about.
    monkeypatch.setattr("gpt2repro.training.setup.peak_flops_for", lambda d, t: (1e12, "test"))
    result = bench_recipes(
        tmp_path,
        seeds=2,
        ablation=False,
        probe_steps=4,
        evals=4,
        classic=tiny(corpus, "shakespeare_cpu"),
        modern=tiny(corpus, "modern_shakespeare_cpu"),
    )
    for name in ("classic", "modern"):
        r = result["recipes"][name]
        assert len(r["final_bpb"]["values"]) == 2
        assert r["final_bpb"]["min"] <= r["final_bpb"]["median"] <= r["final_bpb"]["max"]
        assert all(len(c) >= 4 for c in result["curves"][name])  # evaluations along the way
    # The modern runs are held to the classic budget (plus the stop's last step).
    assert (
        max(result["recipes"]["modern"]["train_seconds"]["values"])
        < 2 * result["budget_train_seconds"] + 1.0
    )
    assert result["target_bpb"] == result["recipes"]["classic"]["final_bpb"]["median"]
    figure = plot_recipes(result, tmp_path / "recipes.png")
    assert figure.stat().st_size > 1000
