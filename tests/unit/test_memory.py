"""memory.py against torch itself: its tracker against torch's MemTracker and against the same
count on real tensors, the closed-form floor against the optimizer's state, the accumulation
shortcut against two real micro-steps; the micro-batch search and the dry-run lines."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from gpt2repro.config import BatchConfig, TrainConfig
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.presets import train_preset
from gpt2repro.training import plan
from gpt2repro.training.memory import (
    MemoryEstimate,
    PeakTracker,
    Probe,
    needed_bytes,
    state_floor,
    step_probe,
    suggest_micro_batch,
    valid_micro_batches,
)
from gpt2repro.training.optimizer import build_optimizer
from gpt2repro.training.step import optimizer_step, train_step

CPU = torch.device("cpu")
T = 64


def config(
    parallel: str = "ddp", micro_batch: int = 4, accum: int = 1, world: int = 1
) -> TrainConfig:
    cfg = train_preset("shakespeare_cpu")
    cfg.model = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=T, vocab_size=500)
    cfg.batch = BatchConfig(micro_batch * T * accum * world, micro_batch, T)
    cfg.run.parallel = parallel
    return cfg


def probe_peak(cfg: TrainConfig, dtype: str = "bf16", world: int = 1, fake: bool = True) -> int:
    with step_probe(cfg, dtype, CPU, world, fake=fake) as probe:
        est = probe(cfg.batch.micro_batch)
    assert est is not None and est.peak > est.floor, est
    return est.peak


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("parallel,world", [("ddp", 1), ("fsdp", 2)])
def test_tracker_counts_what_torch_memtracker_counts(dtype: str, parallel: str, world: int) -> None:
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    reference = mem_tracker.MemTracker()
    with reference:  # sees the build too, but the step's peak is the higher
        peak = probe_peak(config(parallel, world=world), dtype, world, fake=False)
    assert peak == reference.get_tracker_snapshot("peak")[CPU]["Total"]


@pytest.mark.parametrize(
    "parallel,world,accum", [("ddp", 1, 1), ("ddp", 1, 3), ("ddp", 2, 2), ("fsdp", 2, 2)]
)
def test_fake_tensors_hold_what_real_tensors_hold(parallel: str, world: int, accum: int) -> None:
    cfg = config(parallel, accum=accum, world=world)
    assert probe_peak(cfg, world=world) == probe_peak(cfg, world=world, fake=False)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_one_micro_step_on_zero_gradients_holds_what_the_second_of_two_holds(dtype: str) -> None:
    cfg = config(accum=2)
    tracker = PeakTracker()
    with tracker:
        model = GPT(cfg.model)
        optimizer = build_optimizer(model, cfg.optim, CPU)
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        x = torch.randint(0, cfg.model.vocab_size, (4, T))
        for _ in range(2):  # the first makes AdamW's state
            tracker.peak = tracker.live
            train_step(model, optimizer, scaler, lambda: (x, x), 2, CPU, dtype, 1.0)
            optimizer_step(model, optimizer, scaler)
    # Up to a few scalars: the first micro-step's loss is alive in the second.
    assert probe_peak(cfg, dtype, fake=False) == pytest.approx(tracker.peak, abs=16)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_floor_is_the_state_the_optimizer_keeps(optimizer: str) -> None:
    cfg = config()
    cfg.optim.optimizer = optimizer
    model = GPT(cfg.model)
    opt = build_optimizer(model, cfg.optim, CPU)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    params = sum(p.nbytes for p in model.parameters())
    moments = [t for s in opt.state.values() for k, t in s.items() if k != "step"]
    assert state_floor(cfg) == (params, params, sum(t.nbytes for t in moments))
    cfg.run.parallel = "fsdp"
    assert state_floor(cfg, 4) == tuple(n // 4 for n in state_floor(cfg, 1))


def fake_probe(cfg: TrainConfig, per_sequence: int, calls: list[int], oom: int = 1 << 62) -> Probe:
    """A step whose peak grows by `per_sequence` bytes a sequence, gradients held in forward
    with accumulation; `oom` bytes and more run out of memory."""
    weights, grads, optimizer = state_floor(cfg)

    def probe(mb: int) -> MemoryEstimate | None:
        calls.append(mb)
        accum = cfg.batch.tokens_per_step // (mb * cfg.batch.seq_len)
        peak = weights + optimizer + max(grads, (grads if accum > 1 else 0) + per_sequence * mb)
        return MemoryEstimate(mb, peak, weights, grads, optimizer, "test") if peak < oom else None

    return probe


@pytest.mark.parametrize("per_sequence", [10**6, 10**8])
def test_suggestion_is_the_largest_fitting_divisor_found_in_few_steps(per_sequence: int) -> None:
    cfg = train_preset("gpt2_124m_owt")  # 491,520 tokens/step: 480 sequences of 1,024
    candidates = valid_micro_batches(cfg.batch.tokens_per_step, cfg.batch.seq_len, 1)
    assert candidates[:6] == [1, 2, 3, 4, 5, 6] and len(candidates) == 24
    previous = 0
    for gb in (3, 4, 8, 16, 24, 40, 80, 141):
        calls: list[int] = []
        probe = fake_probe(cfg, per_sequence, calls)
        s = suggest_micro_batch(cfg, probe, "cuda", gb * 10**9)
        assert len(set(calls)) <= math.ceil(math.log2(len(candidates))) + 2, calls
        fitting = [mb for mb in candidates if needed_bytes(probe(mb), "cuda") <= s.budget]  # type: ignore[arg-type]
        assert s.micro_batch == max(fitting, default=None), (gb, s.message)
        if s.micro_batch is not None:
            assert s.estimate is not None and needed_bytes(s.estimate, "cuda") <= s.budget
            assert s.micro_batch >= previous and f"--batch.micro-batch {s.micro_batch}" in s.message
            previous = s.micro_batch


def test_single_micro_step_can_fit_where_accumulation_does_not() -> None:
    cfg = train_preset("gpt2_1558m")
    cfg.batch = BatchConfig(2 * 1024, 1, 1024)  # micro-batch 1 accumulates, 2 does not
    weights, grads, optimizer = state_floor(cfg)
    budget = weights + optimizer + grads + 1.5 * 10**9 + 500_000_000
    s = suggest_micro_batch(cfg, fake_probe(cfg, 10**9, []), "cuda", int(budget / 0.9))
    assert s.micro_batch == 2, s.message  # 1 holds gradients beside its activations


def test_suggestion_says_when_nothing_fits() -> None:
    cfg = train_preset("gpt2_1558m")
    calls: list[int] = []
    s = suggest_micro_batch(cfg, fake_probe(cfg, 10**8, calls), "cuda", 16 * 10**9)
    assert s.micro_batch is None and not calls  # the floor alone is too much
    assert s.message.startswith("none: even micro-batch 1 needs more than") and "fsdp" in s.message
    every_step_oom = fake_probe(cfg, 10**8, calls, oom=sum(state_floor(cfg)))
    s = suggest_micro_batch(cfg, every_step_oom, "cuda", 80 * 10**9)
    assert s.micro_batch is None and s.message.startswith("none: even micro-batch 1 needs more")
    cfg.batch.tokens_per_step = 1000
    with pytest.raises(ValueError, match="not a multiple"):
        suggest_micro_batch(cfg, fake_probe(cfg, 1, calls), "cuda", 16 * 10**9)


def test_probe_is_measured_once_per_micro_batch_and_grows_with_it() -> None:
    cfg = config(accum=8)  # 32 sequences a step
    with step_probe(cfg, "fp32", CPU) as probe:
        peaks = [probe(mb) for mb in (1, 2, 4, 8, 4)]
    assert peaks[2] is peaks[4]  # cached
    sizes = [p.peak for p in peaks if p is not None]
    assert sizes[:4] == sorted(sizes[:4]) and len(set(sizes[:4])) == 4
    assert all(p.floor == sum(state_floor(cfg)) for p in peaks if p is not None)
    fsdp = replace(cfg, run=replace(cfg.run, parallel="fsdp"))
    with step_probe(fsdp, "fp32", CPU, 4) as probe:
        sharded = probe(2)
    assert sharded is not None and sharded.peak < sizes[1]


def test_dry_run_reports_memory_and_the_largest_micro_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(plan, "measure_matmul_peak", lambda *a, **k: 1e12)
    cfg = train_preset("shakespeare_cpu")
    cfg.run.device = "cpu"
    report = plan.dry_run_report(cfg)
    for needle in ("parameters:", "time per step:", "peak memory:", "device memory:"):
        assert needle in report
    assert "measured: one eager training step on fake tensors" in report
    assert "floor " in report and "weights " in report and "optimizer state " in report
    assert "largest micro-batch: 32 (--batch.micro-batch 32)" in report
