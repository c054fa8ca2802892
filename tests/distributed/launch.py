"""Starting `gpt2repro train` under torchrun from a test, and reading what a run left behind."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from safetensors.torch import load_file

# A tiny fp32 CPU run: 2 layers, width 32, 256 tokens per step. Dropout 0 so that one
# process with micro-batch B and two with B/2 compute the same thing. No biases: the key
# part of the attention bias has a true gradient of exactly zero (softmax ignores a shift
# shared by all keys), and Adam turns its fp32 rounding noise into lr-sized steps that
# differ with the summation order, so no two launch layouts could agree on it.
TINY: dict[str, Any] = {
    "model.vocab-size": 300,
    "model.block-size": 32,
    "model.n-layer": 2,
    "model.n-head": 2,
    "model.n-embd": 32,
    "model.dropout": 0.0,
    "model.bias": False,
    "optim.lr": 3e-3,
    "optim.min-lr": 3e-4,
    "optim.warmup-steps": 3,
    "batch.tokens-per-step": 256,
    "batch.micro-batch": 4,
    "batch.seq-len": 32,
    "run.max-steps": 12,
    "run.device": "cpu",
    "run.dtype": "fp32",
    "run.seed": 7,
    "eval.interval": 4,
    "eval.val-tokens": 416,  # 13 windows: an odd number of eval batches, so one rank pads
    "eval.sample-interval": 6,
    "eval.sample-tokens": 8,
    "checkpoint.interval": 4,
    "checkpoint.keep-last": 10,
    "log.interval": 1,
}


def train_args(corpus: SimpleNamespace, out_dir: Path, **overrides: Any) -> list[str]:
    """`gpt2repro train` arguments for TINY with `overrides` (dotted names, dashes), on the
    classic recipe's preset (the default run's Muon cannot run under FSDP)."""
    args = [
        "--preset",
        "shakespeare_cpu",
        "--data.dataset",
        str(corpus.data_dir),
        "--data.data-root",
        str(corpus.root / "data"),
        "--data.tokenizer",
        corpus.tokenizer,
        "--run.out-dir",
        str(out_dir),
        "--log.no-tensorboard",
    ]
    for key, value in {**TINY, **overrides}.items():
        if isinstance(value, bool):  # tyro flags: --model.bias / --model.no-bias
            section, name = key.rsplit(".", 1)
            args.append(f"--{key}" if value else f"--{section}.no-{name}")
        else:
            args += [f"--{key}", str(value)]
    return args


def child_env() -> dict[str, str]:
    # One thread per process: two ranks on two cores must not fight over them.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def torchrun(
    args: list[str], nproc: int = 2, launcher: list[str] | None = None
) -> subprocess.Popen[str]:
    """`torchrun --standalone --nproc_per_node=N -m gpt2repro train ARGS` (or `launcher` options)."""
    opts = launcher if launcher is not None else ["--standalone", f"--nproc_per_node={nproc}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", *opts, "-m", "gpt2repro", "train", *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
    )


def single(args: list[str]) -> subprocess.Popen[str]:
    """The same command as one plain process."""
    cmd = [sys.executable, "-m", "gpt2repro", "train", *args]
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
    )


def finish(proc: subprocess.Popen[str], timeout: float = 300.0) -> str:
    """Wait for `proc`; fail with its output unless it succeeded. Returns stdout."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-5000:]}"
    return out


def records(run_dir: Path, kind: str = "train") -> list[dict[str, Any]]:
    """The run's metrics.jsonl rows of one kind, in file order (duplicates kept)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def metrics(run_dir: Path, kind: str = "train", key: str = "loss") -> dict[int, float]:
    return {r["step"]: r[key] for r in records(run_dir, kind)}


def weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def worker_pids(launcher_pid: int) -> dict[int, int]:
    """LOCAL_RANK -> pid of the workers a torchrun process started (Linux /proc)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid != launcher_pid:
                continue
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):  # the process ended meanwhile
            continue
        for var in environ:
            if var.startswith(b"LOCAL_RANK="):
                found[int(var.removeprefix(b"LOCAL_RANK="))] = int(stat.parent.name)
    return found


def wait_for(
    predicate: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 120.0
) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"run ended early: {proc.communicate()[1][-3000:]}"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.02)
