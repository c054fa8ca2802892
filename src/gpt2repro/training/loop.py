"""The training loop: one optimizer step at a time, with evaluation, samples and checkpoints.

Helpers are plain functions with explicit arguments; the only mutable run state is
`TrainState`, which goes into every checkpoint. Rank-aware side effects go through
`session.dist.is_main`; decisions every rank must share (skip a step, stop) go through
one `agree` per step; collectives (evaluation, FSDP checkpoint gathers, FSDP sampling)
are called by every rank.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2repro import checkpoint as ckpt
from gpt2repro.config import TrainConfig
from gpt2repro.data.loader import TokenLoader
from gpt2repro.distributed import agree, all_reduce_sum, broadcast_object, gather_objects, print0
from gpt2repro.evaluation.hellaswag import hellaswag_eval
from gpt2repro.evaluation.val import split_loss
from gpt2repro.parallelize import (
    autocast,
    is_dtensor,
    is_sharded,
)
from gpt2repro.plot import plot_loss
from gpt2repro.sampling import SamplingConfig, generate
from gpt2repro.training.optimizer import lr_at, set_lr
from gpt2repro.training.setup import Session, open_session, write_run_records
from gpt2repro.training.step import optimizer_step, train_step


@dataclass
class TrainState:
    """Progress of a run; saved in every checkpoint's meta.json."""

    step: int = 0
    """Optimizer steps completed."""
    tokens: int = 0
    """Training tokens consumed, all ranks together."""
    train_seconds: float = 0.0
    """Wall time spent in training steps (excludes evaluation and checkpointing)."""
    best_val_loss: float = math.inf
    skipped_steps: int = 0
    """Steps skipped for a non-finite or spiking loss."""
    bad_streak: int = 0
    """Consecutive skipped steps, reset by a good one."""
    overflow_steps: int = 0
    """Steps the fp16 loss scaler skipped for overflowing gradients (it lowers its scale and
    goes on: expected now and then, so not counted as bad)."""
    recent_losses: list[float] = field(default_factory=list)
    """Window of recent good losses for spike detection."""


@dataclass
class RunResult:
    run_dir: Path
    state: TrainState
    final_val: dict[str, float]
    stopped_by: str
    """finished, time_limit, signal or unstable."""
    checkpoint: Path | None
    signal: int | None = None
    """The signal that stopped the run (SIGINT, SIGTERM), if one did."""


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


def is_bad_step(
    loss: float, norm: float, recent: list[float], spike_zscore: float | None, scaled: bool
) -> bool:
    """Non-finite loss (or gradient, unless the fp16 scaler (`scaled`) handles it), or a loss
    `spike_zscore` standard deviations above the `recent` good ones.

    `loss` is the mean over ranks and `norm` the global norm, so every rank decides alike.
    """
    if not math.isfinite(loss) or (not math.isfinite(norm) and not scaled):
        return True
    if spike_zscore is not None and len(recent) >= 20:
        mean = sum(recent) / len(recent)
        std = math.sqrt(sum((v - mean) ** 2 for v in recent) / len(recent))
        return loss > mean + spike_zscore * max(std, 1e-8)
    return False


def apply_step(s: Session, state: TrainState, loss: float, norm: float) -> bool:
    """Step the optimizer unless the step is bad; returns whether it was applied."""
    scaled = s.scaler.is_enabled()
    bad = is_bad_step(loss, norm, state.recent_losses, s.cfg.stability.spike_zscore, scaled)
    if bad:
        state.skipped_steps += 1
        state.bad_streak += 1
    else:
        state.bad_streak = 0
        state.recent_losses = [*state.recent_losses[-49:], loss]
    optimizer_step(s.model, s.optimizer, s.scaler, apply=not bad)
    overflow = not bad and not math.isfinite(norm)  # only reachable with the scaler on
    state.overflow_steps += overflow
    return not bad and not overflow


class Diverged(ValueError):
    """The weights, or the loss they give on validation data, are no longer finite: skipping
    steps cannot bring such a model back, and a checkpoint of it is worthless."""


def non_finite(s: Session) -> str | None:
    """What about the model is no longer finite, as a clause; None if nothing is.

    Finite weights can still be too large to compute with (an lr of 1e30 makes them ~1e29):
    the loss of one validation batch tells. A collective: every rank checks its own shard,
    and runs the forward (eagerly: a compiled model would recompile for it).
    """
    gpt = ckpt.unwrap(s.model)
    names = [name for name, _ in gpt.named_parameters()]
    local = [p.to_local() if is_dtensor(p) else p for p in gpt.parameters()]  # type: ignore[attr-defined]
    flags = torch.stack([~torch.isfinite(t.detach()).all() for t in local]).float()
    bad = all_reduce_sum(flags, s.dist)  # float: not every backend sums booleans
    broken = [name for name, b in zip(names, bad.tolist(), strict=True) if b]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        return f"weights ({broken[0]}{more}) hold inf or NaN"
    b = s.cfg.batch
    tokens = b.micro_batch * b.seq_len * s.dist.world_size  # one micro-batch per rank
    with torch.compiler.set_stance("force_eager"):
        loss = split_loss(
            gpt,
            s.data_dir,
            "val",
            b.micro_batch,
            b.seq_len,
            tokens,
            s.device,
            s.dtype,
            s.dist,
            tokenizer=s.tokenizer,
        )["loss"]
    return None if math.isfinite(loss) else f"loss on a validation batch is {loss}"


def check_finite(s: Session, state: TrainState, good: Path | None) -> None:
    """Raise `Diverged` if the model is no longer finite; `good` is the newest checkpoint
    known finite. Every rank calls it."""
    what = non_finite(s)
    if what is None:
        return
    again = (
        f"resume from the last good checkpoint, --checkpoint.resume {good}"
        if good is not None
        else "start again"
    )
    raise Diverged(
        f"step {state.step}: the model diverged: its {what}. Stopped before saving or sampling "
        f"it. Lower --optim.lr (now {s.cfg.optim.lr:g}) and {again}; if the loss jumped at one "
        f"batch, check the data (`gpt2repro data verify {s.data_dir}`)."
    )


def save(s: Session, state: TrainState, loader: TokenLoader, name: str | None = None) -> Path:
    """Write a training checkpoint and keep the newest K; every rank calls it, rank 0 writes."""
    root = s.run_dir / "checkpoints"
    path = root / (name or f"step_{state.step:06d}")
    meta = {"step": state.step, "train_state": asdict(state), "loader": loader.state_dict()}
    meta["config"] = json.loads(s.config_json)
    ckpt.save_train_checkpoint(path, s.model, s.tokenizer, s.optimizer, s.scaler, meta, s.dist)
    if name is None and s.dist.is_main:
        ckpt.prune(root, s.cfg.checkpoint.keep_last, newest=path)
    return path


def resume(s: Session, loader: TokenLoader, source: Path) -> TrainState:
    """Restore weights, optimizer, scaler, loader position and RNGs from `source`, and check
    that its weights still compute (the later checks take it as good)."""
    try:
        meta = ckpt.restore_train_checkpoint(source, s.model, s.optimizer, s.scaler, s.dist)
    except ckpt.DamagedCheckpoint as e:  # every rank reads the same files, so all raise
        raise ckpt.DamagedCheckpoint(f"{e} {ckpt.fallback_advice(source)}") from None
    if what := non_finite(s):  # written by a run that saved whatever it had
        raise Diverged(
            f"{source}: the model in it diverged: its {what}. {ckpt.fallback_advice(source)}"
        )
    note = loader.load_state_dict(meta["loader"])
    print0(s.dist, f"resumed from {source} at step {meta['step']}")
    if note:
        print0(s.dist, f"note: {note}")
    return TrainState(**meta["train_state"])


def resume_source(s: Session) -> Path | None:
    """The checkpoint to resume from, chosen by rank 0 and checked to be readable on every rank."""
    source = ckpt.find_resume(s.cfg.checkpoint.resume, s.run_dir)
    source = broadcast_object(source, s.dist)  # one decision, even if listings differ by node
    if source is not None and s.dist.enabled:
        readable = gather_objects(ckpt.is_checkpoint(source), s.dist)
        blind = [rank for rank, ok in enumerate(readable) if not ok]
        if blind and len(blind) < s.dist.world_size:
            raise ValueError(
                f"{source}: rank(s) {blind} cannot read this checkpoint. Put run.out_dir on a "
                f"filesystem that every node mounts, or copy the checkpoint there."
            )
    return source


def evaluate(s: Session, state: TrainState) -> dict[str, float]:
    """Validation loss and bits-per-byte on the fixed token budget; logs and keeps the best."""
    b = s.cfg.batch
    result = split_loss(
        s.model,
        s.data_dir,
        "val",
        b.micro_batch,
        b.seq_len,
        s.cfg.eval.val_tokens,
        s.device,
        s.dtype,
        s.dist,
        tokenizer=s.tokenizer,
    )
    if s.dist.is_main:
        # "tokens" is training progress in every record (the x axis of loss_tokens.png);
        # how many validation tokens were scored is "val_tokens".
        scored = {"val_tokens": result["tokens"]} | {
            k: v for k, v in result.items() if k != "tokens"
        }
        s.writer.write({"step": state.step, "kind": "val", "tokens": state.tokens, **scored})
        print0(
            s.dist,
            f"step {state.step:>6} | val loss {result['loss']:.4f} | val bpb {result['bpb']:.4f}",
        )
    if s.hellaswag is not None:
        hs = hellaswag_eval(
            s.model, s.hellaswag, s.tokenizer, s.device, s.dtype, s.dist, progress=False
        )
        if s.dist.is_main:
            s.writer.write({"step": state.step, "kind": "hellaswag", "tokens": state.tokens, **hs})
            print0(s.dist, f"step {state.step:>6} | hellaswag acc_norm {hs['acc_norm']:.4f}")
    return result


def write_samples(s: Session, state: TrainState, num: int = 2) -> None:
    """Rank 0 writes samples; under FSDP every rank generates with it (each forward is collective)."""
    if not (s.dist.is_main or is_sharded(s.model)):
        return
    model = ckpt.unwrap(s.model)  # uncompiled: variable-length decoding would recompile each call
    prompt = s.tokenizer.encode(s.cfg.eval.sample_prompt) or [s.tokenizer.eot_id]
    idx = torch.tensor([prompt] * num, device=s.device)
    gen = torch.Generator(device=s.device).manual_seed(s.cfg.run.seed)
    cfg = SamplingConfig(max_new_tokens=s.cfg.eval.sample_tokens, temperature=0.8, top_k=200)
    # FSDP compiles blocks in place, so unwrap() cannot skip them: run them eagerly instead.
    with autocast(s.device, s.dtype), torch.compiler.set_stance("force_eager"):
        out = generate(model, idx, cfg, generator=gen)
    if s.dist.is_main:
        s.writer.write_samples(state.step, [s.tokenizer.decode(row) for row in out.tolist()])


def log_train(
    s: Session,
    state: TrainState,
    loss_avg: float,
    norm: float,
    lr: float,
    t_log: float,
    steps: int,
    train_dt: float,
) -> None:
    """One line and one JSONL record per log interval (rank 0); `loss_avg` is the mean over ranks.

    Throughput and MFU count the interval's training steps only (`train_dt`), not the
    evaluations, samples and checkpoints in it; the ETA counts them all (wall time).
    """
    dt = max(time.perf_counter() - t_log, 1e-9)
    tok_s = steps * s.cfg.batch.tokens_per_step / max(train_dt, 1e-9)
    mfu = tok_s * s.flops_per_token / s.peak_flops / s.dist.world_size if s.peak_flops else 0.0
    remaining = (s.cfg.run.max_steps - state.step) * dt / steps
    rec = {
        "step": state.step,
        "kind": "train",
        "loss": loss_avg,
        "lr": lr,
        "grad_norm": norm,
    }
    rec |= {
        "tokens": state.tokens,
        "tokens_per_s": tok_s,
        "mfu": mfu,
        "skipped": state.skipped_steps,
        "overflow_steps": state.overflow_steps,
    }
    rec |= {"mem_gb": s.peak_memory() / 1e9, "eta_s": remaining}
    if s.dist.is_main:
        s.writer.write(rec)
        print(
            f"step {state.step:>6}/{s.cfg.run.max_steps} | loss {loss_avg:.4f} | lr {lr:.2e} | "
            f"norm {rec['grad_norm']:.3f} | {tok_s:,.0f} tok/s | mfu {100 * mfu:.1f}% | "
            f"mem {rec['mem_gb']:.2f} GB | eta {remaining / 60:.1f} min",
            flush=True,
        )


def due(step: int, interval: int) -> bool:
    return interval > 0 and step % interval == 0


def writes_due(cfg: TrainConfig, step: int) -> bool:
    """Whether `step` evaluates, samples or saves a checkpoint."""
    intervals = (cfg.eval.interval, cfg.eval.sample_interval, cfg.checkpoint.interval)
    return any(due(step, interval) for interval in intervals)


def periodic(s: Session, state: TrainState, loader: TokenLoader, last_step: bool) -> Path | None:
    """The evaluation (saving a new best), samples and checkpoint due at this step; returns
    the checkpoint written, if one was. At the last step finish() evaluates and samples."""
    c = s.cfg
    if due(state.step, c.eval.interval) and not last_step:
        val = evaluate_or_save(s, state, loader)
        if val["loss"] < state.best_val_loss:
            state.best_val_loss = val["loss"]
            save(s, state, loader, name="best")
    if due(state.step, c.eval.sample_interval) and not last_step:
        write_samples(s, state)
    return save(s, state, loader) if due(state.step, c.checkpoint.interval) else None


def out_of_time(cfg: TrainConfig, train_seconds: float) -> bool:
    return cfg.run.max_minutes is not None and train_seconds > 60 * cfg.run.max_minutes


def evaluate_or_save(s: Session, state: TrainState, loader: TokenLoader) -> dict[str, float]:
    """`evaluate`; if it fails (a damaged val shard, a full disk), save the training first.

    Only failures every rank meets alike (its files and disks) are caught: the save is a
    collective, which a rank failing alone would leave the others waiting in.
    """
    try:
        return evaluate(s, state)
    except (ValueError, OSError):
        path = save(s, state, loader)
        print0(
            s.dist,
            f"evaluation failed at step {state.step}; the training so far is saved in {path}. "
            f"Fix the cause below, then continue with --checkpoint.resume auto.",
        )
        raise


def start(s: Session) -> tuple[TokenLoader, TrainState, Path | None]:
    """The data loader and the run's state: fresh, or restored from the resume checkpoint."""
    c = s.cfg
    loader = TokenLoader(
        s.data_dir,
        "train",
        c.batch.micro_batch,
        c.batch.seq_len,
        rank=s.dist.rank,
        world_size=s.dist.world_size,
        seed=c.run.seed,
        device=s.device,
    )
    source = resume_source(s)
    state = resume(s, loader, source) if source is not None else TrainState()
    write_run_records(s)
    if s.dist.is_main:
        s.writer.truncate_after(state.step)
        moved = ckpt.set_aside_after(s.run_dir / "checkpoints", state.step)
        if moved:
            print(f"moved {len(moved)} checkpoint(s) after step {state.step} to {moved[0].parent}")
    return loader, state, source


def train(cfg: TrainConfig) -> RunResult:
    """Train according to `cfg`; returns where everything went."""
    s = open_session(cfg)
    c = s.cfg  # the session may adjust it (vocabulary size from the tokenizer)
    accum = c.grad_accum_steps(s.dist.world_size)
    loader, state, source = start(s)
    if state.step >= c.run.max_steps:  # open_session refused a checkpoint past the end
        print0(
            s.dist,
            f"nothing to train: {source} is at step {state.step} = run.max_steps. "
            f"Pass a larger --run.max-steps to train on from it.",
        )
        loader.close()
        s.close()
        return RunResult(s.run_dir, state, {}, "finished", source)
    stopped_by, last = "finished", None
    t_log, steps_since_log, train_s_log = time.perf_counter(), 0, state.train_seconds
    with StopRequest() as stop:
        while state.step < c.run.max_steps:
            lr = lr_at(state.step, c.optim, c.run.max_steps)
            set_lr(s.optimizer, lr)
            t0 = time.perf_counter()
            loss, norm_t = train_step(
                s.model,
                s.optimizer,
                s.scaler,
                loader.next_batch,
                accum,
                s.device,
                s.dtype,
                c.optim.grad_clip,
            )
            timed_out = out_of_time(c, state.train_seconds + time.perf_counter() - t0)
            loss_avg, (signalled, timed_out) = agree(loss, (stop.requested, timed_out), s.dist)
            norm = norm_t.item()
            apply_step(s, state, loss_avg, norm)
            state.step += 1
            state.tokens += c.batch.tokens_per_step
            state.train_seconds += time.perf_counter() - t0
            steps_since_log += 1
            if due(state.step, c.log.interval) or state.step == c.run.max_steps:
                train_dt = state.train_seconds - train_s_log
                log_train(s, state, loss_avg, norm, lr, t_log, steps_since_log, train_dt)
                t_log, steps_since_log, train_s_log = time.perf_counter(), 0, state.train_seconds
            # At the last step, or when stopping for time, finish() evaluates and samples.
            last_step = state.step == c.run.max_steps or timed_out
            writes = last_step or signalled or writes_due(c, state.step)
            if writes or not math.isfinite(loss_avg):  # a bad batch, or a broken model?
                check_finite(s, state, good=last or source)
            if state.bad_streak >= c.stability.max_bad_steps:
                stopped_by = "unstable"
                break
            last = periodic(s, state, loader, last_step) or last
            if signalled or timed_out:
                stopped_by = "signal" if signalled else "time_limit"
                break
        result = finish(s, state, loader, stopped_by, last)
        result.signal = stop.signum if stopped_by == "signal" else None
        return result


def finish(
    s: Session, state: TrainState, loader: TokenLoader, stopped_by: str, last: Path | None
) -> RunResult:
    """Final checkpoint, evaluation and samples (skipped for an unstable run: its last good checkpoint stays)."""
    final_val: dict[str, float] = {}
    if stopped_by == "unstable":
        print0(
            s.dist,
            f"stopping: {state.bad_streak} consecutive non-finite or spiking steps. "
            f"The last good checkpoint is {last}; lower optim.lr or raise stability.max_bad_steps.",
        )
    else:
        if last is None or last.name != f"step_{state.step:06d}":
            last = save(s, state, loader)
        if stopped_by != "signal":
            final_val = evaluate(s, state)
            if final_val["loss"] < state.best_val_loss:
                state.best_val_loss = final_val["loss"]
                save(s, state, loader, name="best")
            write_samples(s, state)
        if s.dist.is_main:
            plot_loss([s.run_dir], s.run_dir / "loss.png")
    if stopped_by in ("time_limit", "signal"):
        why = "time limit" if stopped_by == "time_limit" else "signal"
        how = "continue with --checkpoint.resume auto"
        if stopped_by == "time_limit":
            assert s.cfg.run.max_minutes is not None, "a time limit stop needs run.max_minutes"
            how += f"; {ckpt.more_minutes(state.train_seconds, s.cfg.run.max_minutes)}"
        print0(s.dist, f"stopped at step {state.step} of {s.cfg.run.max_steps} ({why}); {how}")
    loader.close()
    s.close()
    return RunResult(s.run_dir, state, final_val, stopped_by, last)
