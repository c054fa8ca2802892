"""Ranks wait for rank 0's setup (tokenizer training, dataset preparation) beyond the
process group's timeout: without `wait_for_main`, NCCL's watchdog (here gloo's timeout)
would end the job while rank 0 is still preparing FineWeb-Edu."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .launch import child_env

WORKER = Path(__file__).with_name("wait_worker.py")
DELAY_S = 16.0  # beyond the worker's 10 s group timeout


def launch(mode: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [str(WORKER), mode, str(DELAY_S)]
    return subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=180)


@pytest.mark.distributed
def test_ranks_wait_for_rank_0_beyond_the_group_timeout() -> None:
    waited = launch("long")
    assert waited.returncode == 0, waited.stderr[-3000:]
    assert "rank 0 sum 2" in waited.stdout and "rank 1 sum 2" in waited.stdout
    # The control: a plain barrier on the training group gives up after its timeout.
    plain = launch("group")
    assert plain.returncode != 0, plain.stdout
