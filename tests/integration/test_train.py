"""Training end to end on a tiny local corpus: exact resume after SIGKILL, SIGTERM checkpoints,
non-finite steps, run-directory records, dry runs. Faults enter through a part of the run
(`helpers.run_with_parts`), not a patched loop."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import (
    cli_args,
    launch,
    run_with_parts,
    train_config,
    train_losses,
    train_rows,
    wait_for,
)
from safetensors.torch import load_file

import gpt2repro.training.loop as train_module
from gpt2repro.checkpoint import load_model
from gpt2repro.config import StabilityConfig, TrainConfig
from gpt2repro.distributed import DistInfo
from gpt2repro.evaluation.hellaswag import hellaswag_eval, load_examples
from gpt2repro.run_dir import RunDir
from gpt2repro.training.optimizer import lr_at


def final_weights(run_dir: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "checkpoints" / f"step_{step:06d}" / "model.safetensors"))


def test_sigkill_then_resume_is_bit_exact(corpus: SimpleNamespace, tmp_path: Path) -> None:
    steps = 40
    straight = train_config(corpus, tmp_path / "straight", steps)
    straight.checkpoint.interval = 5
    proc = launch(cli_args(straight))
    assert proc.wait(timeout=300) == 0, proc.communicate()[1][-2000:]

    interrupted = train_config(corpus, tmp_path / "killed", steps)
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
    cfg = train_config(corpus, tmp_path / "run", steps=100_000)
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
    cfg = train_config(corpus, tmp_path / "run", steps=12)
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
    cfg = train_config(corpus, run_dir, steps=8)
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


class PoisonedAfter(torch.nn.Module):
    """The run's model, wrapped (as DDP wraps it: `unwrap` finds the GPT in `.module`), whose
    training loss is NaN after its first `good` micro-batches, as a bad batch makes it.
    Evaluation and the divergence check read the GPT's own, finite loss."""

    def __init__(self, module: torch.nn.Module, good: int) -> None:
        super().__init__()
        self.module, self.good, self.calls = module, good, 0

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.module(x, y)
        if self.training:
            self.calls += 1
            if self.calls > self.good:
                return loss * float("nan")
        return loss


def test_non_finite_steps_are_skipped_then_stop(corpus: SimpleNamespace, tmp_path: Path) -> None:
    # The whole loop: skipping, the streak that stops the run and what it keeps on disk are
    # the loop's doing. (A skipped step's weights and AdamW moments: tests/unit/test_stability.py.)
    cfg = train_config(corpus, tmp_path / "run", steps=20)
    cfg.stability = StabilityConfig(max_bad_steps=3)
    cfg.eval.interval = 0
    accum = cfg.grad_accum_steps(1)
    result = run_with_parts(cfg, model=lambda m: PoisonedAfter(m, good=6 * accum))  # 7, 8, 9 NaN
    assert result.stopped_by == "unstable"
    assert result.state.skipped_steps == 3 and result.state.step == 9
    # Logged after every step: steps 7, 8 and 9 are the skipped ones.
    skipped = [(r["step"], r["skipped"]) for r in train_rows(tmp_path / "run")]
    assert skipped == [(step, max(0, step - 6)) for step in range(1, 10)]
    good = tmp_path / "run" / "checkpoints" / "step_000006"
    assert json.loads((good / "meta.json").read_text())["step"] == 6
    assert not (tmp_path / "run" / "checkpoints" / "step_000009").exists()


class SlowToEvaluate(torch.nn.Module):
    """The run's model, wrapped (`unwrap` finds the GPT in `.module`), whose every evaluation
    forward moves the clock `clock` on by `pause` seconds instead of sleeping."""

    def __init__(self, module: torch.nn.Module, clock: list[float], pause: float) -> None:
        super().__init__()
        self.module, self.clock, self.pause = module, clock, pause

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.clock[0] += self.pause
        return self.module(x, y)


def test_throughput_excludes_evaluation_time(
    corpus: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The whole loop: which seconds the logged rate divides by is the loop's bookkeeping.
    real_clock = time.perf_counter
    pause = 1000.0  # seconds an evaluation seems to take: far beyond any training step
    skipped = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: real_clock() + skipped[0])
    cfg = train_config(corpus, tmp_path / "run", steps=8)
    cfg.log.interval, cfg.eval.interval, cfg.eval.sample_interval = 4, 4, 0
    cfg.log.tensorboard = False
    run_with_parts(cfg, model=lambda m: SlowToEvaluate(m, skipped, pause))
    train = {r["step"]: r for r in train_rows(tmp_path / "run")}
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
    cfg = train_config(corpus, tmp_path / "run", steps=8)
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
