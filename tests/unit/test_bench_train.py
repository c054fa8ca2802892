"""`bench train`: the per-variant row and the target summary computed from the rows."""

from __future__ import annotations

import pytest

from gpt2repro.bench.train import (
    bracketed_mfu,
    fold_bracket_windows,
    train_targets,
    train_variant,
)


def row(shape: str, dtype: str, compile: bool, tok_s: float, peak: float, median: float) -> dict:
    fpt = 1e9  # FLOPs per token, so achieved TFLOP/s = tok_s / 1000
    return {
        "shape": shape,
        "dtype": dtype,
        "compile": compile,
        "tokens_per_s": tok_s,
        "speedup_vs_fp32_eager": tok_s / 100.0,
        "mfu_vs_measured_peak": tok_s * fpt / (peak * 1e12),
        "measured_peak_tflops": peak,
        "measured_median_tflops": median,
    }


def test_targets_use_the_best_bf16_variant_and_the_runs_highest_peak() -> None:
    rows = [
        row("s", "fp32", False, 100.0, 0.3, 0.25),
        row("s", "bf16", False, 200.0, 1.0, 0.8),
        row("s", "bf16", True, 300.0, 0.6, 0.5),  # measured a low peak: must not flatter itself
    ]
    t = train_targets(rows)["s"]
    assert t["best_bf16"] == "compile=True"
    assert t["achieved_tflops"] == pytest.approx(0.3)
    assert t["mfu_vs_run_bf16_peak"] == pytest.approx(0.3)  # 0.3 / 1.0, not 0.3 / 0.6
    assert t["mfu_vs_median_bf16_window"] == pytest.approx(0.3 / 0.8)
    assert t["speedup_vs_fp32_eager"] == pytest.approx(3.0)
    assert not t["meets_mfu_0.40"] and t["meets_speedup_2.5x"]


def test_best_variant_is_chosen_by_side_by_side_speedup_not_raw_speed() -> None:
    eager = row("s", "bf16", False, 200.0, 1.0, 0.8)  # ran in a fast minute
    compiled = row("s", "bf16", True, 180.0, 1.0, 0.8) | {"speedup_vs_fp32_eager": 2.4}
    t = train_targets([row("s", "fp32", False, 100.0, 0.3, 0.25), eager, compiled])["s"]
    assert t["best_bf16"] == "compile=True"
    assert t["speedup_vs_fp32_eager"] == pytest.approx(2.4)
    assert t["achieved_tflops"] == pytest.approx(0.18)


def test_train_variant_times_real_steps() -> None:
    r = train_variant("shakespeare_cpu", "fp32", False, steps=1, device_name="cpu")
    assert r["micro_batch"] * r["seq_len"] == 32 * 128
    assert r["tokens_per_s"] > 0 and r["step_s_min"] <= r["step_s_median"] <= r["step_s_max"]
    assert 0 < r["mfu_vs_measured_peak"] < 1.5
    assert r["measured_median_tflops"] <= r["measured_peak_tflops"]
    assert r["step_s"] == [r["step_s_median"]]
    assert r["flops_per_token"] > 6 * 4_000_000
    assert r["peak_memory_gb"] > 0


def test_bracketed_mfu_drops_steps_that_straddled_a_phase_change_and_splits_phases() -> None:
    flops = 1e12  # one TFLOP per step: MFU = 1 / (step seconds * window TFLOP/s)
    slow = [(0.8, 2.5, 0.76), (0.78, 2.6, 0.8), (0.75, 2.4, 0.78)]
    fast = [(2.0, 1.6, 1.9), (1.95, 1.5, 2.05)]
    straddled = [(0.8, 1.0, 2.0), (2.0, 2.9, 0.8)]  # must not count in either phase
    r = bracketed_mfu(slow + straddled + fast, flops)
    assert (r["steps"], r["steady_steps"]) == (7, 5)
    low, high = r["phases"]
    assert low["steps"] == 3 and low["window_tflops"] == pytest.approx(0.78)
    assert low["mfu"] == pytest.approx(1 / (2.5 * 0.78))
    assert high["steps"] == 2 and high["window_tflops"] == pytest.approx(1.975)
    assert high["mfu"] == pytest.approx(1 / (1.55 * 1.975))
    assert r["triples"][3] == [0.8, 1.0, 2.0]


def test_bracketed_mfu_keeps_one_phase_on_a_steady_machine() -> None:
    r = bracketed_mfu([(1.0, 2.0, 1.05), (1.1, 2.2, 1.0), (0.95, 1.8, 1.0)], 1e12)
    (phase,) = r["phases"]
    assert phase["steps"] == 3 and phase["step_s_median"] == pytest.approx(2.0)
    assert bracketed_mfu([(1.0, 2.0, 2.0)], 1e12)["phases"] == []


def test_targets_report_the_best_variants_phases() -> None:
    best = row("s", "bf16", True, 300.0, 1.0, 0.8)
    best["bracketed"] = bracketed_mfu([(0.8, 1.0, 0.8), (2.0, 0.5, 2.0)], 1e12)
    t = train_targets([row("s", "fp32", False, 100.0, 0.3, 0.25), best])["s"]
    assert [p["mfu"] for p in t["mfu_by_phase"]] == pytest.approx([1.25, 1.0])


def test_bracketing_windows_count_towards_the_rows_peak() -> None:
    r = row("s", "bf16", True, 600.0, 0.8, 0.75)  # its closing windows all fell in a slow phase
    r |= {"flops_per_token": 1e9, "windows_tflops": [0.8, 0.7, 0.75]}
    fold_bracket_windows(r, [(0.7, 5.0, 2.0), (1.9, 4.0, 0.8)])
    assert r["measured_peak_tflops"] == 2.0
    assert r["measured_median_tflops"] == pytest.approx(0.8)
    assert r["mfu_vs_measured_peak"] == pytest.approx(0.6 / 2.0)
    t = train_targets([row("s", "fp32", False, 100.0, 0.3, 0.25), r])["s"]
    assert t["mfu_vs_run_bf16_peak"] == pytest.approx(0.3)


def test_bracketed_mfu_keeps_the_triples_when_no_step_was_steady() -> None:
    r = bracketed_mfu([(0.8, 1.0, 2.0)], 1e12)
    assert (r["steady_steps"], r["phases"], r["triples"]) == (0, [], [[0.8, 1.0, 2.0]])
