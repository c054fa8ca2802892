"""Training end to end on a tiny local corpus: exact resume after SIGKILL, SIGTERM checkpoints,
non-finite steps, run-directory records, dry runs."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import gpt2repro.training.loop as train_module
from gpt2repro.checkpoint import load_model
from gpt2repro.config import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RunConfig,
    StabilityConfig,
    TrainConfig,
)
from gpt2repro.distributed import DistInfo
from gpt2repro.evaluation.hellaswag import hellaswag_eval, load_examples
from gpt2repro.model import GPTConfig
from gpt2repro.run_dir import RunDir
from gpt2repro.training.optimizer import lr_at
from gpt2repro.training.stability import is_bad_step


def tiny_config(corpus: SimpleNamespace, out_dir: Path, steps: int = 12) -> TrainConfig:
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
    """The same config as command-line overrides (exercises the typed override parser too)."""
    m, b, r = cfg.model, cfg.batch, cfg.run
    return [
        "--model.vocab-size",
        str(m.vocab_size),
        "--model.block-size",
        str(m.block_size),
        "--model.n-layer",
        str(m.n_layer),
        "--model.n-head",
        str(m.n_head),
        "--model.n-embd",
        str(m.n_embd),
        "--model.dropout",
        str(m.dropout),
        "--data.dataset",
        cfg.data.dataset,
        "--data.data-root",
        str(cfg.data.data_root),
        "--data.tokenizer",
        cfg.data.tokenizer,
        "--optim.lr",
        str(cfg.optim.lr),
        "--optim.min-lr",
        str(cfg.optim.min_lr),
        "--optim.warmup-steps",
        str(cfg.optim.warmup_steps),
        "--batch.tokens-per-step",
        str(b.tokens_per_step),
        "--batch.micro-batch",
        str(b.micro_batch),
        "--batch.seq-len",
        str(b.seq_len),
        "--run.max-steps",
        str(r.max_steps),
        "--run.device",
        "cpu",
        "--run.dtype",
        "fp32",
        "--run.out-dir",
        str(r.out_dir),
        "--run.seed",
        str(r.seed),
        "--eval.interval",
        "0",
        "--eval.sample-interval",
        "0",
        "--checkpoint.interval",
        str(cfg.checkpoint.interval),
        "--log.interval",
        "1",
        "--log.no-tensorboard",
    ]


def launch(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "gpt2repro", "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def train_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "train"]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in train_rows(run_dir)}


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def wait_for(predicate: object, proc: subprocess.Popen[str], timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert proc.poll() is None, f"run ended early: {proc.communicate()[1][-2000:]}"
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def test_sigkill_then_resume_is_bit_exact(corpus: SimpleNamespace, tmp_path: Path) -> None:
    steps = 40
    straight = tiny_config(corpus, tmp_path / "straight", steps)
    straight.checkpoint.interval = 5
    proc = launch(cli_args(straight))
    assert proc.wait(timeout=300) == 0, proc.communicate()[1][-2000:]

    interrupted = tiny_config(corpus, tmp_path / "killed", steps)
    interrupted.checkpoint.interval = 5
    proc = launch(cli_args(interrupted))
    first = tmp_path / "killed" / "checkpoints" / "step_000005"
    wait_for(first.exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = sorted((tmp_path / "killed" / "checkpoints").glob("step_*"))
    assert done and int(done[-1].name[5:]) < steps, "the run finished before the kill; test is void"

    proc = launch([*cli_args(interrupted), "--checkpoint.resume", "auto"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "resumed from" in out
    a, b = train_losses(tmp_path / "straight"), train_losses(tmp_path / "killed")
    # One raw row per step: the steps logged after the last checkpoint and before the kill
    # were trained again, and their first rows must be gone (a dict would hide duplicates).
    assert len(train_rows(tmp_path / "killed")) == steps
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert a == b  # bit-identical floats, every step
    wa, wb = final_weights(tmp_path / "straight", steps), final_weights(tmp_path / "killed", steps)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigterm_writes_a_checkpoint_and_resume_continues(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    cfg = tiny_config(corpus, tmp_path / "run", steps=100_000)
    cfg.checkpoint.interval = 0
    proc = launch(cli_args(cfg))
    metrics = tmp_path / "run" / "metrics.jsonl"
    wait_for(lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143
    saved = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))
    assert len(saved) == 1
    step = json.loads((saved[0] / "meta.json").read_text())["step"]
    assert step == max(train_losses(tmp_path / "run"))
    assert (
        f"stopped at step {step} of 100000 (signal); continue with --checkpoint.resume auto" in out
    )
    args = cli_args(cfg)
    args[args.index("--run.max-steps") + 1] = str(step + 2)
    proc = launch([*args, "--checkpoint.resume", "auto"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert f"at step {step}" in out
    assert max(train_losses(tmp_path / "run")) == step + 2


def test_run_directory_records_everything(corpus: SimpleNamespace, tmp_path: Path) -> None:
    cfg = tiny_config(corpus, tmp_path / "run", steps=12)
    result = train_module.train(cfg)
    run = tmp_path / "run"
    assert result.stopped_by == "finished" and result.state.step == 12
    assert json.loads((run / "config.json").read_text())["optim"]["lr"] == 3e-3
    env = json.loads((run / "environment.json").read_text())
    assert {"git_revision", "packages", "hardware", "python"} <= env.keys()
    assert env["packages"]["torch"] == str(torch.__version__)  # local tag (+cpu, +cu128) included
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert [r["step"] for r in train_rows] == list(range(1, 13))
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "mem_gb", "eta_s", "tokens"):
        assert key in train_rows[0], key
    val_rows = [r for r in rows if r["kind"] == "val"]
    assert [r["step"] for r in val_rows] == [4, 8, 12]
    assert all(r["bpb"] > 0 and r["loss"] > 0 for r in val_rows)
    assert math.isclose(val_rows[-1]["loss"], result.final_val["loss"])
    # Every record's "tokens" is training progress (plots put val points at it); the
    # validation tokens scored are apart, "val_tokens".
    trained = {r["step"]: r["tokens"] for r in train_rows}
    assert [r["tokens"] for r in val_rows] == [trained[4], trained[8], trained[12]]
    assert trained[4] == 4 * cfg.batch.tokens_per_step
    assert all(r["val_tokens"] == result.final_val["tokens"] for r in val_rows)
    assert any((run / "tensorboard").iterdir())
    assert "=== step 6 ===" in (run / "samples.txt").read_text()
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "checkpoints" / "best" / "meta.json").is_file()
    kept = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert kept == ["step_000009", "step_000012"]  # keep_last=2
    # Lower training loss than at the start: it learns.
    assert train_rows[-1]["loss"] < train_rows[0]["loss"]
    # The logged lr of step k (1-based) is the schedule's at 0-based step k - 1.
    assert [r["lr"] for r in train_rows] == [lr_at(k, cfg.optim, 12) for k in range(12)]


def eight_steps_saved_at_5_and_8(corpus: SimpleNamespace, run_dir: Path) -> TrainConfig:
    """A finished 8-step run with checkpoints at steps 5 and 8; returns its config."""
    cfg = tiny_config(corpus, run_dir, steps=8)
    cfg.checkpoint.interval, cfg.eval.interval, cfg.log.tensorboard = 5, 0, False
    train_module.train(cfg)
    return cfg


def test_resume_from_an_earlier_checkpoint_rewrites_the_later_steps(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    cfg = eight_steps_saved_at_5_and_8(corpus, tmp_path / "run")
    straight = train_rows(tmp_path / "run")
    cfg.checkpoint.resume = str(tmp_path / "run" / "checkpoints" / "step_000005")
    train_module.train(cfg)
    again = train_rows(tmp_path / "run")
    # Steps 6-8 ran twice: one row each, not two, and the same losses (exact resume).
    assert [r["step"] for r in again] == list(range(1, 9))
    assert [r["loss"] for r in again] == [r["loss"] for r in straight]


def test_resuming_earlier_sets_the_later_checkpoints_aside(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    cfg = eight_steps_saved_at_5_and_8(corpus, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    stale = (root / "step_000008" / "model.safetensors").read_bytes()
    cfg.checkpoint.resume = str(root / "step_000005")
    cfg.run.max_steps = 6
    train_module.train(cfg)
    # The old step 8 is kept, but apart: `auto` continues the run that resumed, at step 6.
    assert (root / "abandoned" / "step_000008" / "model.safetensors").read_bytes() == stale
    assert RunDir(tmp_path / "run").find_resume("auto") == root / "step_000006"


def test_non_finite_steps_are_skipped_then_stop(
    corpus: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_step = train_module.train_step
    calls = {"n": 0}

    def poisoned(*args):  # type: ignore[no-untyped-def]
        loss, norm = real_step(*args)
        calls["n"] += 1
        if calls["n"] > 6:  # steps 7, 8, 9 produce NaN
            return loss * float("nan"), norm
        return loss, norm

    real_apply = train_module.apply_step
    skipped: list[int] = []

    def checked_apply(s, state, loss, norm, spike):  # type: ignore[no-untyped-def]
        params = [p.detach().clone() for p in s.model.parameters()]
        moments = copy.deepcopy(s.optimizer.state_dict()["state"])
        applied = real_apply(s, state, loss, norm, spike)
        if not applied:  # a skipped step leaves weights and AdamW state bit-identical
            skipped.append(state.step + 1)
            after = s.optimizer.state_dict()["state"]
            assert all(torch.equal(a, p) for a, p in zip(params, s.model.parameters(), strict=True))
            assert moments.keys() == after.keys() and moments  # AdamW has stepped before
            for pid, entry in moments.items():
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    assert torch.equal(entry[key], after[pid][key]), (pid, key)
        return applied

    monkeypatch.setattr(train_module, "train_step", poisoned)
    monkeypatch.setattr(train_module, "apply_step", checked_apply)
    cfg = tiny_config(corpus, tmp_path / "run", steps=20)
    cfg.stability = StabilityConfig(max_bad_steps=3)
    cfg.eval.interval = 0
    result = train_module.train(cfg)
    assert result.stopped_by == "unstable"
    assert result.state.skipped_steps == 3 and result.state.step == 9
    assert skipped == [7, 8, 9]
    good = tmp_path / "run" / "checkpoints" / "step_000006"
    assert json.loads((good / "meta.json").read_text())["step"] == 6
    assert not (tmp_path / "run" / "checkpoints" / "step_000009").exists()


def test_throughput_excludes_evaluation_time(
    corpus: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_evaluate, real_clock = train_module.evaluate, time.perf_counter
    pause = 1000.0  # seconds an evaluation seems to take: far beyond any training step
    skipped = [0.0]

    def clock() -> float:
        return real_clock() + skipped[0]

    def slow_evaluate(*args):  # type: ignore[no-untyped-def]
        skipped[0] += pause  # the clock jumps instead of sleeping: no timing in the test
        return real_evaluate(*args)

    monkeypatch.setattr(time, "perf_counter", clock)
    monkeypatch.setattr(train_module, "evaluate", slow_evaluate)
    cfg = tiny_config(corpus, tmp_path / "run", steps=8)
    cfg.log.interval, cfg.eval.interval, cfg.eval.sample_interval = 4, 4, 0
    cfg.log.tensorboard = False
    train_module.train(cfg)
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert skipped[0] >= pause  # the evaluation at step 4 ran
    # The time steps 5-8 were measured over, from their rate: they follow the evaluation at
    # step 4, and counted in, it would add `pause`.
    seconds = (train[8]["tokens"] - train[4]["tokens"]) / train[8]["tokens_per_s"]
    assert seconds < pause / 2, train


def test_stop_request_records_the_signal() -> None:
    """The CLI's exit status is 128 + this signal: 130 for Ctrl-C, 143 for SIGTERM."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        with train_module.StopRequest() as stop:
            os.kill(os.getpid(), sig)
            assert stop.requested and stop.signum == sig


def test_spike_detection() -> None:
    recent = [3.0 + 0.01 * (i % 5) for i in range(30)]
    assert not is_bad_step(3.05, 1.0, recent, 4.0, scaled=False)
    assert is_bad_step(3.5, 1.0, recent, 4.0, scaled=False)
    assert not is_bad_step(3.5, 1.0, recent, None, scaled=False)  # off
    assert is_bad_step(float("inf"), 1.0, recent, 4.0, scaled=False)
    assert is_bad_step(3.0, float("nan"), recent, 4.0, scaled=False)
    assert not is_bad_step(3.0, float("nan"), recent, 4.0, scaled=True)


@pytest.mark.parametrize("preset", ["shakespeare_cpu", "gpt2_124m_fineweb_edu", "gpt2_1558m"])
def test_dry_run_reports_plan(preset: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gpt2repro", "train", "--preset", preset, "--dry-run"],
        capture_output=True,
        text=True,
        env={**os.environ, "WORLD_SIZE": "1"},
    )
    assert out.returncode == 0, out.stderr
    for needle in (
        "parameters:",
        "tokens per step:",
        "accumulation steps:",
        "time per step:",
        "total time:",
    ):
        assert needle in out.stdout
    if preset == "gpt2_124m_fineweb_edu":
        assert "124,439,808" in out.stdout and "accumulation steps:  8" in out.stdout


def test_bad_overrides_are_rejected() -> None:
    bad = subprocess.run(
        [sys.executable, "-m", "gpt2repro", "train", "--optim.lrr", "1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "--optim.lrr" in bad.stdout + bad.stderr
    wrong_type = subprocess.run(
        [sys.executable, "-m", "gpt2repro", "train", "--run.max-steps", "many"],
        capture_output=True,
        text=True,
    )
    assert wrong_type.returncode != 0
    indivisible = subprocess.run(
        [
            sys.executable,
            "-m",
            "gpt2repro",
            "train",
            "--batch.tokens-per-step",
            "1000",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
    )
    assert indivisible.returncode == 2 and indivisible.stderr.startswith("error: ")
    assert "not a multiple" in indivisible.stderr and "Traceback" not in indivisible.stderr


def test_hellaswag_runs_at_each_evaluation(corpus: SimpleNamespace, tmp_path: Path) -> None:
    rows = [
        {
            "ind": i,
            "activity_label": "Sword play",
            "ctx_a": "The king draws his sword.",
            "ctx_b": "he",
            "ctx": "The king draws his sword. he",
            "split": "val",
            "split_type": "indomain",
            "label": i % 4,
            "endings": [
                " speaks of peace.",
                " hears the night.",
                " fights the lord.",
                " loves the queen.",
            ],
            "source_id": f"test~{i}",
        }
        for i in range(3)
    ]
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_config(corpus, tmp_path / "run", steps=8)
    cfg.eval.hellaswag, cfg.eval.hellaswag_path = True, path
    train_module.train(cfg)
    records = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    scored = [r for r in records if r["kind"] == "hellaswag"]
    assert [r["step"] for r in scored] == [4, 8]
    # The final score is the evaluation module's on the final checkpoint, run on its own.
    model, tok, _ = load_model(tmp_path / "run" / "checkpoints" / "step_000008")
    examples = load_examples(path)
    ref = hellaswag_eval(
        model, examples, tok, torch.device("cpu"), "fp32", DistInfo(), progress=False
    )
    assert scored[-1]["n"] == ref["n"] == 3
    for key in ("acc", "acc_norm", "acc_bytes"):
        assert scored[-1][key] == ref[key], key
