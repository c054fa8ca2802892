"""A fine-tune (`--model.init-from`) under DDP and FSDP: two ranks with micro-batch B/2 train
exactly like one process with B, from a source of the modern architecture (RoPE, RMSNorm,
QK-norm, ReLU², untied head, soft-capped logits), which the run takes from the source."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from .launch import finish, max_abs_diff, metrics, single, torchrun, train_args, weights

pytestmark = pytest.mark.distributed

STEPS = 12
TOL = 1e-6  # fp32: the computations differ only in summation order

MODERN: dict[str, Any] = {
    "model.position": "rope",
    "model.norm": "rmsnorm",
    "model.qk-norm": True,
    "model.activation": "relu2",
    "model.tie-embeddings": False,
    "model.logit-softcap": 15.0,
}


def test_two_ranks_fine_tune_like_one_process(corpus: SimpleNamespace, tmp_path: Path) -> None:
    finish(single(train_args(corpus, tmp_path / "source", **MODERN, **{"run.max-steps": 4})))
    # No modern flags here: the architecture comes from the source.
    init = {"model.init-from": str(tmp_path / "source")}
    one = single(train_args(corpus, tmp_path / "single", **init))
    two = {**init, "batch.micro-batch": 2}
    finish(torchrun(train_args(corpus, tmp_path / "ddp", **two)))
    finish(one)
    finish(torchrun(train_args(corpus, tmp_path / "fsdp", **two, **{"run.parallel": "fsdp"})))
    for mode in ("ddp", "fsdp"):
        a, b = metrics(tmp_path / "single"), metrics(tmp_path / mode)
        assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
        assert max(abs(a[k] - b[k]) for k in a) < TOL, (mode, a, b)
        val_a, val_b = metrics(tmp_path / "single", "val"), metrics(tmp_path / mode, "val")
        assert sorted(val_a) == sorted(val_b) == [0, 4, 8, 12]
        assert max(abs(val_a[k] - val_b[k]) for k in val_a) < TOL, (mode, val_a, val_b)
        w_a, w_b = weights(tmp_path / "single", STEPS), weights(tmp_path / mode, STEPS)
        assert max_abs_diff(w_a, w_b) < TOL, mode
    # It started from the source's weights: its step-0 loss is the source's last one.
    source_val = metrics(tmp_path / "source", "val")
    assert abs(metrics(tmp_path / "single", "val")[0] - source_val[4]) < TOL
