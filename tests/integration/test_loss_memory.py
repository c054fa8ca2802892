"""The chunked loss at a GPT-2-size vocabulary: peak memory against the naive path's, measured."""

from __future__ import annotations

import pytest

from gpt2repro.bench.loss import bench_loss


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_chunked_loss_peak_memory_at_most_60_percent_of_naive(dtype: str) -> None:
    # 2,048 tokens over 50,304 padded rows: the naive path's fp32 logits alone are 412 MB.
    r = bench_loss(tokens=2048, n_embd=64, vocab=50257, dtype=dtype, device_name="cpu", reps=1)
    naive = r["rows"][0]
    assert naive["peak_extra_gb"] > 0.8  # the measurement sees the naive logits at all
    assert r["memory_ratio"] <= 0.6, r
    tolerance = 1e-5 if dtype == "fp32" else 2e-2  # bf16: 8 mantissa bits
    assert r["loss_max_rel_diff"] <= tolerance
    assert r["grad_x_max_rel_diff"] <= tolerance
    assert r["grad_w_max_rel_diff"] <= tolerance
