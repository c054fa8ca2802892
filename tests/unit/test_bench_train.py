"""`bench train`: the per-variant row and the target summary computed from the rows."""

from __future__ import annotations

import pytest

from gpt2repro.bench_train import train_targets, train_variant


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
    assert r["peak_memory_gb"] > 0
