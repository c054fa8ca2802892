"""`train`: the run's parts built in numbered steps, then the loop, one optimizer step at a
time, with evaluation, samples and checkpoints.

The only mutable run state is `TrainState`, which goes into every checkpoint. Rank-aware
side effects go through `rt.dist.is_main`; decisions every rank must share (skip a step,
stop) go through one `agree` per step; collectives (evaluation, FSDP checkpoint gathers,
FSDP sampling) are called by every rank.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from pathlib import Path
from typing import Any

from gpt2repro.config import TrainConfig
from gpt2repro.data.loader import TokenLoader
from gpt2repro.distributed import agree, print0
from gpt2repro.plot import plot_loss
from gpt2repro.run_dir import RunDir, decide_resume, more_minutes
from gpt2repro.training.init_from import load_source_weights
from gpt2repro.training.optimizer import apply_schedule
from gpt2repro.training.report import evaluate, log_train, write_samples
from gpt2repro.training.saving import resume, save, save_step
from gpt2repro.training.setup import (
    Inputs,
    Outputs,
    Runtime,
    Trainee,
    build_model,
    build_trainee,
    close,
    open_inputs,
    open_outputs,
    open_runtime,
    write_run_records,
)
from gpt2repro.training.stability import apply_step, check_finite
from gpt2repro.training.state import RunResult, TrainState
from gpt2repro.training.step import train_step


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag checked between steps, so a checkpoint is written first."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGTERM, signal.SIGINT):
            # Outside the main thread signal() raises ValueError: leave signals alone there.
            with contextlib.suppress(ValueError):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: TrainConfig) -> RunResult:
    """Train according to `cfg`; returns where everything went."""
    # 1. Where it runs: device, process group and precision; the config checked for them.
    rt = open_runtime(cfg)
    # 2. What it continues: the resume checkpoint, decided on rank 0 and read now, so a
    #    damaged one fails before anything large is built.
    run_dir = RunDir(cfg.run.out_dir)
    r = cfg.run
    point = decide_resume(run_dir, cfg.checkpoint.resume, r.max_steps, r.max_minutes, rt.dist)
    # 3. What it reads: data and tokenizer (prepared if missing), checked; the vocabulary
    #    size comes from the tokenizer.
    cfg, inputs = open_inputs(cfg, rt)
    # 4. What trains: the model on the meta device, materialised and initialised (or, for
    #    a fine-tune, given its source's weights), then wrapped (DDP/FSDP, compile); its
    #    optimizer and loss scaler.
    gpt = build_model(cfg, rt)
    if cfg.init.source is not None and point is None:  # a resume restores its own weights
        load_source_weights(gpt, cfg.init.source)
    trainee = build_trainee(cfg, gpt, rt)
    # 5. Where it writes: the run directory (an earlier run moved aside), metric sinks.
    out = open_outputs(cfg, run_dir, point, rt, gpt)
    # 6. Where it starts: the loader, and the state fresh or restored from the checkpoint.
    loader = TokenLoader(
        inputs.data_dir,
        "train",
        cfg.batch.micro_batch,
        cfg.batch.seq_len,
        rank=rt.dist.rank,
        world_size=rt.dist.world_size,
        seed=cfg.run.seed,
        device=rt.device,
    )
    source = point[0] if point else None
    try:
        state = TrainState()
        if source is not None:
            state = resume(source, trainee, inputs, rt, loader, cfg.batch)
        start_records(out, rt, state)
        if cfg.init.source is not None and state.step == 0:
            # The source's own loss, before any update: the fine-tune's gain in metrics.jsonl.
            evaluate(cfg, trainee.model, inputs, rt, out.writer, state)
        if state.step >= cfg.run.max_steps:  # decide_resume refused one past the end
            print0(
                rt.dist,
                f"nothing to train: {source} is at step {state.step} = run.max_steps. "
                f"Pass a larger --run.max-steps to train on from it.",
            )
            return RunResult(run_dir.path, state, {}, "finished", source)
        # 7. The loop.
        return run(cfg, rt, inputs, trainee, out, loader, state, source)
    finally:
        loader.close()
        close(trainee, out)


def start_records(out: Outputs, rt: Runtime, state: TrainState) -> None:
    """Once the run has started: config and environment written, appended files trimmed to
    `state.step`, and later checkpoints of a run resumed from an earlier one set aside."""
    write_run_records(out, rt)
    if rt.dist.is_main:
        out.writer.truncate_after(state.step)
        moved = out.run_dir.set_aside_after(state.step)
        if moved:
            print(f"moved {len(moved)} checkpoint(s) after step {state.step} to {moved[0].parent}")


def run(
    cfg: TrainConfig,
    rt: Runtime,
    inputs: Inputs,
    trainee: Trainee,
    out: Outputs,
    loader: TokenLoader,
    state: TrainState,
    source: Path | None,
) -> RunResult:
    """Optimizer steps until the last one, a signal, the time limit or instability."""
    c, t = cfg, trainee
    accum = c.grad_accum_steps(rt.dist.world_size)
    stopped_by, last = "finished", source
    since = (time.perf_counter(), state.step, state.train_seconds)  # at the previous log
    with StopRequest() as stop:
        while state.step < c.run.max_steps:
            lr = apply_schedule(t.optimizer, state.step, c.optim, c.run.max_steps)
            t0 = time.perf_counter()
            loss, norm_t = train_step(
                t.model, t.optimizer, t.scaler, loader.next_batch, accum,
                rt.device, rt.dtype, c.optim.grad_clip,
            )  # fmt: skip
            timed_out = out_of_time(c, state.train_seconds + time.perf_counter() - t0)
            loss_avg, (signalled, timed_out) = agree(loss, (stop.requested, timed_out), rt.dist)
            norm = norm_t.item()
            apply_step(t, state, loss_avg, norm, c.stability.spike_zscore)
            state.step += 1
            state.tokens += c.batch.tokens_per_step
            state.train_seconds += time.perf_counter() - t0
            if due(state.step, c.log.interval) or state.step == c.run.max_steps:
                log_train(c, rt, out, state, loss_avg, norm, lr, since)
                since = (time.perf_counter(), state.step, state.train_seconds)
            # At the last step, or when stopping for time, finish() evaluates and samples.
            last_step = state.step == c.run.max_steps or timed_out
            if last_step or signalled or writes_due(c, state.step) or not math.isfinite(loss_avg):
                check_finite(t.model, inputs, c.batch, rt, state, c.optim.lr, good=last)
            if state.bad_streak >= c.stability.max_bad_steps:
                stopped_by = "unstable"
                break
            last = periodic(c, rt, inputs, t, out, loader, state, last_step) or last
            if signalled or timed_out:
                stopped_by = "signal" if signalled else "time_limit"
                break
        result = finish(c, rt, inputs, t, out, loader, state, stopped_by, last)
        result.signal = stop.signum if stopped_by == "signal" else None
        return result


def due(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def writes_due(cfg: TrainConfig, step: int) -> bool:
    """Whether `step` evaluates, samples or saves a checkpoint."""
    intervals = (cfg.eval.interval, cfg.eval.sample_interval, cfg.checkpoint.interval)
    return any(due(step, interval) for interval in intervals)


def out_of_time(cfg: TrainConfig, train_seconds: float) -> bool:
    return cfg.run.max_minutes is not None and train_seconds > 60 * cfg.run.max_minutes


def periodic(
    cfg: TrainConfig,
    rt: Runtime,
    inputs: Inputs,
    trainee: Trainee,
    out: Outputs,
    loader: TokenLoader,
    state: TrainState,
    last_step: bool,
) -> Path | None:
    """The evaluation (saving a new best), samples and checkpoint due at this step; returns
    the checkpoint written, if one was. At the last step finish() evaluates and samples."""
    if due(state.step, cfg.eval.interval) and not last_step:
        val = evaluate_or_save(cfg, rt, inputs, trainee, out, loader, state)
        if val["loss"] < state.best_val_loss:
            state.best_val_loss = val["loss"]
            save(out.run_dir.best, trainee, inputs, out, rt, state, loader)
    if due(state.step, cfg.eval.sample_interval) and not last_step:
        write_samples(cfg, trainee.model, inputs, rt, out.writer, state)
    if due(state.step, cfg.checkpoint.interval):
        return save_step(trainee, inputs, out, rt, state, loader, cfg.checkpoint.keep_last)
    return None


def evaluate_or_save(
    cfg: TrainConfig,
    rt: Runtime,
    inputs: Inputs,
    trainee: Trainee,
    out: Outputs,
    loader: TokenLoader,
    state: TrainState,
) -> dict[str, float]:
    """`evaluate`; if it fails (a damaged val shard, a full disk), save the training first.

    Only failures every rank meets alike (its files and disks) are caught: the save is a
    collective, which a rank failing alone would leave the others waiting in.
    """
    try:
        return evaluate(cfg, trainee.model, inputs, rt, out.writer, state)
    except (ValueError, OSError):
        path = save_step(trainee, inputs, out, rt, state, loader, cfg.checkpoint.keep_last)
        print0(
            rt.dist,
            f"evaluation failed at step {state.step}; the training so far is saved in {path}. "
            f"Fix the cause below, then continue with --checkpoint.resume auto.",
        )
        raise


def finish(
    cfg: TrainConfig,
    rt: Runtime,
    inputs: Inputs,
    trainee: Trainee,
    out: Outputs,
    loader: TokenLoader,
    state: TrainState,
    stopped_by: str,
    last: Path | None,
) -> RunResult:
    """Final checkpoint, evaluation and samples (skipped for an unstable run: its last good
    checkpoint stays)."""
    final_val: dict[str, float] = {}
    if stopped_by == "unstable":
        print0(
            rt.dist,
            f"stopping: {state.bad_streak} consecutive non-finite or spiking steps. "
            f"The last good checkpoint is {last}; lower optim.lr or raise stability.max_bad_steps.",
        )
    else:
        if last is None or last != out.run_dir.step_checkpoint(state.step):
            last = save_step(trainee, inputs, out, rt, state, loader, cfg.checkpoint.keep_last)
        if stopped_by != "signal":
            final_val = evaluate(cfg, trainee.model, inputs, rt, out.writer, state)
            if final_val["loss"] < state.best_val_loss:
                state.best_val_loss = final_val["loss"]
                save(out.run_dir.best, trainee, inputs, out, rt, state, loader)
            write_samples(cfg, trainee.model, inputs, rt, out.writer, state)
        if rt.dist.is_main:
            plot_loss([out.run_dir.path], out.run_dir.loss_plot)
    if stopped_by in ("time_limit", "signal"):
        why = "time limit" if stopped_by == "time_limit" else "signal"
        how = "continue with --checkpoint.resume auto"
        if stopped_by == "time_limit":
            assert cfg.run.max_minutes is not None, "a time limit stop needs run.max_minutes"
            how += f"; {more_minutes(state.train_seconds, cfg.run.max_minutes)}"
        print0(rt.dist, f"stopped at step {state.step} of {cfg.run.max_steps} ({why}); {how}")
    return RunResult(out.run_dir.path, state, final_val, stopped_by, last)
