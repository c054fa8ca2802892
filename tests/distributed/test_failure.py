"""A rank killed mid-run ends the whole job quickly, with torchrun naming it; `--checkpoint.resume
auto` then continues from the last complete checkpoint and reproduces the uninterrupted run."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gpt2repro.run_dir import step_dirs

from .launch import finish, metrics, torchrun, train_args, wait_for, weights, worker_pids

pytestmark = pytest.mark.distributed

STEPS = 30
# Dropout on, so the resumed ranks must each get their own RNG state back.
RUN = {
    "batch.micro-batch": 2,
    "model.dropout": 0.1,
    "run.max-steps": STEPS,
    "checkpoint.interval": 5,
    "eval.interval": 0,
    "eval.sample-interval": 0,
}


def test_killed_rank_fails_the_job_then_resume_is_bit_exact(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    straight = torchrun(train_args(corpus, tmp_path / "straight", **RUN))
    run_dir = tmp_path / "killed"
    proc = torchrun(train_args(corpus, run_dir, **RUN))
    wait_for((run_dir / "checkpoints" / "step_000005").exists, proc)
    victim = worker_pids(proc.pid)[1]
    os.kill(victim, signal.SIGKILL)
    killed_at = time.time()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert time.time() - killed_at < 60, (
        "the surviving rank should fail fast, not wait for a timeout"
    )
    # torchrun's summary names the rank that died and how.
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s+exitcode\s*: -9", err), err[-3000:]
    assert f"Signal 9 (SIGKILL) received by PID {victim}" in err
    saved = step_dirs(run_dir / "checkpoints")
    assert saved and int(saved[-1].name.removeprefix("step_")) < STEPS, "finished before the kill"

    out = finish(torchrun(train_args(corpus, run_dir, **RUN, **{"checkpoint.resume": "auto"})))
    assert f"resumed from {saved[-1]}" in out
    finish(straight)
    a, b = metrics(tmp_path / "straight"), metrics(run_dir)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    assert a == b  # bit-identical floats, every step
    wa, wb = weights(tmp_path / "straight", STEPS), weights(run_dir, STEPS)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
