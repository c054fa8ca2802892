"""memory.py against what torch really holds: parameters, the tensors autograd saves, the
allocation trace of whole training steps; and the micro-batch suggestion and dry-run lines."""

from __future__ import annotations

import time
from dataclasses import fields

import pytest
import torch

from gpt2repro.config import OptimConfig
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import train_forward_context
from gpt2repro.presets import train_preset
from gpt2repro.training import plan
from gpt2repro.training.memory import (
    activation_bytes,
    activation_bytes_per_token,
    allocated_params,
    busy_moments,
    estimate_peak,
    loss_head_saved_bytes,
    needed_bytes,
    suggest_micro_batch,
    uses_math_attention,
    valid_micro_batches,
)
from gpt2repro.training.optimizer import build_optimizer

CPU = torch.device("cpu")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("vocab", [97, 128])
def test_allocated_params_count_padded_rows_and_the_tied_head_once(bias: bool, vocab: int) -> None:
    cfg = GPTConfig(vocab_size=vocab, block_size=32, n_layer=2, n_head=2, n_embd=32, bias=bias)
    with torch.device("meta"):
        model = GPT(cfg)
    assert allocated_params(cfg) == sum(p.numel() for p in model.parameters())


def test_breakdown_adds_up_and_the_peak_is_the_busiest_moment() -> None:
    cfg = train_preset("gpt2_124m_owt")
    moments = busy_moments(cfg.model, 16, 1024, "bf16", "cuda", accum_steps=30)
    for m in moments:
        parts = [getattr(m, f.name) for f in fields(m) if f.name != "phase"]
        assert m.total == sum(parts) and min(parts) >= 0
        assert all(name in m.breakdown() for name in ("params", "activations", "transient"))
    peak = estimate_peak(cfg.model, 16, 1024, "bf16", "cuda", accum_steps=30)
    assert peak.total == max(m.total for m in moments)
    # GPT-2 small: 16 B per parameter of fp32 weights, gradients (accumulating) and AdamW state.
    assert peak.params + peak.grads + peak.optimizer == 16 * allocated_params(cfg.model)


def test_parallel_modes_shard_or_duplicate_state() -> None:
    m = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=128, vocab_size=4096)
    P = allocated_params(m)
    one = estimate_peak(m, 8, 128, "bf16", "cuda")
    fsdp = estimate_peak(m, 8, 128, "bf16", "cuda", world_size=8, parallel="fsdp")
    ddp = busy_moments(m, 8, 128, "bf16", "cuda", world_size=2, parallel="ddp")[-1]
    assert fsdp.params == 4 * P // 8 and fsdp.optimizer == 8 * P // 8
    ddp_forward = busy_moments(m, 8, 128, "bf16", "cuda", world_size=2, parallel="ddp")[0]
    assert ddp.grads == ddp_forward.grads == 4 * P  # gradients are DDP's buckets, always there
    accum = busy_moments(m, 8, 128, "bf16", "cuda", world_size=2, parallel="ddp", accum_steps=4)
    assert accum[0].grads == accum[-1].grads == 8 * P  # the first step's no_sync gradients too
    assert fsdp.total < one.total


def saved_bytes(cfg: GPTConfig, micro_batch: int, seq_len: int, dtype: str) -> int:
    """Bytes autograd saves for backward in one training forward, each storage once, parameters excluded."""
    torch.manual_seed(0)
    model = GPT(cfg)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    x = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len))
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, train_forward_context(CPU, dtype, seq_len):
        model(x, x)
    return sum(storages.values())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize(
    "dtype,seq_len",
    [("fp32", 16), ("bf16", 16), ("bf16", 264)],
    ids=["fp32-flash", "bf16-math", "bf16-flash"],
)
def test_saved_activations_match_what_autograd_saves(dtype: str, seq_len: int, bias: bool) -> None:
    cfg = GPTConfig(vocab_size=97, block_size=272, n_layer=2, n_head=2, n_embd=32, bias=bias)
    math = uses_math_attention("cpu", dtype, seq_len)
    assert math == (dtype == "bf16" and seq_len <= 256)
    # autocast's casts of the blocks' Linear weights are saved too (biases are not).
    weight_casts = 2 * 12 * cfg.n_embd**2 * cfg.n_layer if dtype == "bf16" else 0
    for micro_batch in (1, 3):
        expected = (
            activation_bytes(cfg, micro_batch, seq_len, dtype, math)
            + loss_head_saved_bytes(cfg, micro_batch * seq_len)
            + weight_casts
        )
        assert saved_bytes(cfg, micro_batch, seq_len, dtype) == expected
    per_token = saved_bytes(cfg, 2, seq_len, dtype) - saved_bytes(cfg, 1, seq_len, dtype)
    C = cfg.n_embd
    # Blocks, plus a token id, ln_f's input, mean and rstd, and the head's d loss/d hidden.
    expected_per_token = cfg.n_layer * activation_bytes_per_token(cfg, dtype, seq_len, math)
    expected_per_token += 8 + (4 * C + 8) + 4 * C
    assert per_token == seq_len * expected_per_token


def allocation_peaks(cfg: GPTConfig, micro_batch: int, seq_len: int, dtype: str) -> tuple[int, int]:
    """Peak live CPU tensor bytes in the third training step's forward, and in its backward
    and optimizer step, from the profiler's allocation events."""
    x = torch.randint(0, cfg.vocab_size, (micro_batch, seq_len))
    marks = []
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        torch.manual_seed(0)
        model = GPT(cfg)
        opt = build_optimizer(model, OptimConfig(), CPU)
        for _ in range(3):  # AdamW's state exists from the second step on
            marks.append(time.time_ns())
            with train_forward_context(CPU, dtype, seq_len):
                loss = model(x, x)
            marks.append(time.time_ns())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        marks.append(time.time_ns())
    try:
        from torch._C._profiler import _EventType

        stack = list(prof.profiler.kineto_results.experimental_event_tree())
    except (ImportError, AttributeError):
        pytest.skip("this torch's profiler exposes no allocation events")
    events = []  # (time, bytes allocated, change)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        if node.tag == _EventType.Allocation:
            f = node.extra_fields
            events.append((node.start_time_ns, f.total_allocated, f.alloc_size))
    events.sort()
    base = events[0][1] - events[0][2]  # the tally carries over from earlier profiler sessions
    forward = max((a for t, a, _ in events if marks[4] <= t < marks[5]), default=None)
    rest = max((a for t, a, _ in events if marks[5] <= t < marks[6]), default=None)
    if forward is None or rest is None:
        pytest.skip("the profiler's timestamps are not on time.time_ns()'s clock here")
    return forward - base, rest - base


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("micro_batch", [4, 6, 10], ids=["1chunk", "2chunks", "3chunks"])
def test_busy_moments_match_the_allocation_trace(dtype: str, micro_batch: int) -> None:
    """Each transient follows the code it models (loss.py's loop above all): this fails first
    when that code changes. On CPU the loss head runs 512-token chunks here."""
    cfg = GPTConfig(vocab_size=4096, block_size=128, n_layer=2, n_head=4, n_embd=64)
    forward, rest = allocation_peaks(cfg, micro_batch, 128, dtype)
    moments = {m.phase: m.total for m in busy_moments(cfg, micro_batch, 128, dtype, "cpu")}
    in_forward = max(moments["loss head forward"], moments.get("attention forward", 0))
    after = max(moments["backward of the last block"], moments["end of backward / optimizer step"])
    assert in_forward == pytest.approx(forward, rel=0.02)
    assert after == pytest.approx(rest, rel=0.02)


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
    assert "params " in report and "activations " in report and "loss head " in report
    assert "largest micro-batch: 32 (--batch.micro-batch 32)" in report


def test_suggestion_is_the_largest_fitting_divisor_and_monotone_in_memory() -> None:
    cfg = train_preset("gpt2_124m_owt")  # 491,520 tokens/step: 480 sequences of 1,024
    candidates = valid_micro_batches(cfg.batch.tokens_per_step, cfg.batch.seq_len, 1)
    assert candidates[:6] == [1, 2, 3, 4, 5, 6] and candidates[-1] == 480
    previous = 0
    for gb in (8, 16, 24, 40, 80, 141):
        s = suggest_micro_batch(cfg, "bf16", "cuda", gb * 10**9)
        assert s.micro_batch is not None, s.message
        assert needed_bytes(s.estimate, "cuda") <= s.budget == int(0.9 * gb * 10**9)
        larger = [b for b in candidates if b > s.micro_batch]
        if larger:  # the next valid micro-batch would not fit
            est = estimate_peak(cfg.model, larger[0], 1024, "bf16", "cuda", accum_steps=2)
            assert needed_bytes(est, "cuda") > s.budget
        assert s.micro_batch >= previous and f"--batch.micro-batch {s.micro_batch}" in s.message
        previous = s.micro_batch


def test_suggestion_says_when_nothing_fits() -> None:
    cfg = train_preset("gpt2_1558m")
    s = suggest_micro_batch(cfg, "bf16", "cuda", 16 * 10**9)
    assert s.micro_batch is None
    assert s.message.startswith("none: even micro-batch 1 needs") and "fsdp" in s.message
    cfg.batch.tokens_per_step = 1000
    with pytest.raises(ValueError, match="not a multiple"):
        suggest_micro_batch(cfg, "bf16", "cuda", 16 * 10**9)
