"""Validation sharded over two ranks gives the one-process numbers, with a replicated and an
FSDP-sharded model (an odd number of batches, so one rank runs a padding forward); the
interconnect check runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gpt2repro.data.loader import eval_batches
from gpt2repro.distributed import DistInfo, round_robin
from gpt2repro.evaluation.val import split_loss

from .eval_worker import BATCH, SEQ, seeded_model
from .launch import child_env, finish


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7])
def test_round_robin_deals_everything_once_in_equal_turns(n: int) -> None:
    world = 3
    shares = [list(round_robin(range(n), DistInfo(rank=r, world_size=world))) for r in range(world)]
    assert len({len(share) for share in shares}) == 1  # the same number of turns everywhere
    dealt = sorted(item for share in shares for item in share if item is not None)
    assert dealt == list(range(n))
    assert [i for i in shares[1] if i is not None] == list(range(1, n, world))  # k -> rank k % 3


@pytest.mark.distributed
def test_sharded_validation_equals_one_process(corpus: SimpleNamespace, tmp_path: Path) -> None:
    targets = [y.numel() for _, y in eval_batches(corpus.data_dir, "val", BATCH, SEQ, None)]
    assert len(targets) % 2 == 1, f"{len(targets)} batches: pick BATCH so that one rank pads"
    out = tmp_path / "result.json"
    worker = Path(__file__).with_name("eval_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(worker), str(corpus.data_dir), str(out)]
    finish(
        subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
        )
    )
    cpu = torch.device("cpu")
    one = split_loss(
        seeded_model(), corpus.data_dir, "val", BATCH, SEQ, None, cpu, "fp32", DistInfo()
    )
    result = json.loads(out.read_text())
    assert result["allreduce"]["busbw_gb_s"] > 0
    for mode, two in result["val"].items():
        assert two["tokens"] == one["tokens"] == sum(targets), mode
        assert abs(two["loss"] - one["loss"]) < 1e-6, (mode, two, one)
        assert abs(two["bpb"] - one["bpb"]) < 1e-6, (mode, two, one)
