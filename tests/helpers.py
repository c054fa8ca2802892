"""Plain helpers shared by the test modules (fixtures are in conftest.py): a tiny training
config and its command line, a training run built from its parts with one part replaced,
child processes and the CLI, and what a run's metrics.jsonl holds.

Test modules import it as `helpers`: pytest puts tests/ on sys.path for conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from gpt2repro.cli import main
from gpt2repro.config import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from gpt2repro.data.loader import TokenLoader
from gpt2repro.metrics import MetricsWriter
from gpt2repro.model import GPTConfig
from gpt2repro.run_dir import RunDir
from gpt2repro.training.loop import run
from gpt2repro.training.setup import (
    build_model,
    build_trainee,
    close,
    open_inputs,
    open_outputs,
    open_runtime,
)
from gpt2repro.training.state import RunResult, TrainState


def train_config(corpus: SimpleNamespace, out_dir: Path, steps: int = 12) -> TrainConfig:
    """A tiny CPU run on the `corpus` fixture's dataset: 2 micro-batches a step, evaluations,
    samples and checkpoints every few steps."""
    return TrainConfig(
        # Dropout on, so resuming must restore the torch RNG to reproduce the run.
        model=GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1),
        data=DataConfig(
            dataset=str(corpus.data_dir), data_root=corpus.root / "data", tokenizer=corpus.tokenizer
        ),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=3),
        batch=BatchConfig(tokens_per_step=4 * 32 * 2, micro_batch=4, seq_len=32),
        run=RunConfig(max_steps=steps, device="cpu", dtype="fp32", out_dir=out_dir, seed=7),
        eval=EvalConfig(interval=4, val_tokens=512, sample_interval=6, sample_tokens=8),
        checkpoint=CheckpointConfig(interval=3, keep_last=2),
        log=LogConfig(interval=1, tensorboard=True),
    )


def cli_args(cfg: TrainConfig) -> list[str]:
    """The same config as command-line overrides (exercises the typed override parser too),
    with evaluations, samples and TensorBoard off, on the classic recipe's preset."""
    m, b, r = cfg.model, cfg.batch, cfg.run
    return [
        "--preset", "shakespeare_cpu",
        "--model.vocab-size", str(m.vocab_size),
        "--model.block-size", str(m.block_size),
        "--model.n-layer", str(m.n_layer),
        "--model.n-head", str(m.n_head),
        "--model.n-embd", str(m.n_embd),
        "--model.dropout", str(m.dropout),
        "--data.dataset", cfg.data.dataset,
        "--data.data-root", str(cfg.data.data_root),
        "--data.tokenizer", cfg.data.tokenizer,
        "--optim.lr", str(cfg.optim.lr),
        "--optim.min-lr", str(cfg.optim.min_lr),
        "--optim.warmup-steps", str(cfg.optim.warmup_steps),
        "--batch.tokens-per-step", str(b.tokens_per_step),
        "--batch.micro-batch", str(b.micro_batch),
        "--batch.seq-len", str(b.seq_len),
        "--run.max-steps", str(r.max_steps),
        "--run.device", "cpu",
        "--run.dtype", "fp32",
        "--run.out-dir", str(r.out_dir),
        "--run.seed", str(r.seed),
        "--eval.interval", "0",
        "--eval.sample-interval", "0",
        "--checkpoint.interval", str(cfg.checkpoint.interval),
        "--log.interval", "1",
        "--log.no-tensorboard",
    ]  # fmt: skip


def run_with_parts(
    cfg: TrainConfig,
    model: Callable[[torch.nn.Module], torch.nn.Module] = lambda m: m,
    writer: Callable[[MetricsWriter], MetricsWriter] = lambda w: w,
) -> RunResult:
    """A fresh run (no resume) built from `train`'s parts, as `train` builds them, then its
    loop (`loop.run`) with the trained model replaced by `model(it)` and the metrics writer
    by `writer(it)`: a test puts its fault into a part instead of patching the loop."""
    rt = open_runtime(cfg)
    cfg, inputs = open_inputs(cfg, rt)
    gpt = build_model(cfg, rt)
    trainee = build_trainee(cfg, gpt, rt)
    trainee.model = model(trainee.model)
    out = open_outputs(cfg, RunDir(cfg.run.out_dir), None, rt, gpt)
    out = replace(out, writer=writer(out.writer))
    b = cfg.batch
    loader = TokenLoader(
        inputs.data_dir, "train", b.micro_batch, b.seq_len, seed=cfg.run.seed, device=rt.device
    )
    try:
        return run(cfg, rt, inputs, trainee, out, loader, TrainState(), None)
    finally:
        loader.close()
        close(trainee, out)


def launch(args: list[str]) -> subprocess.Popen[str]:
    """`gpt2repro train ARGS` in a child process, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2repro", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for(
    predicate: Callable[[], object], proc: subprocess.Popen[str], timeout: float = 120.0
) -> None:
    """Poll until `predicate()` holds; fails if `proc` ends first or `timeout` passes."""
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"run ended early: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """`gpt2repro ARGS` in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *needles: str) -> None:
    """A user mistake: a non-zero exit and one `error: ` message holding `needles`, no traceback."""
    assert code != 0
    assert err.startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def train_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The run's "train" records, in the order written."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_rows(run_dir)}
