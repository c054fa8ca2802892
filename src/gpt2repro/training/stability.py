"""Bad steps and broken models: a non-finite or spiking loss skips its step (the weights
and optimizer state stay as they were); a model that no longer computes stops the run
before anything of it is saved or sampled."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gpt2repro.checkpoint import unwrap
from gpt2repro.config import BatchConfig
from gpt2repro.distributed import all_reduce_sum
from gpt2repro.evaluation.val import split_loss
from gpt2repro.parallelize import is_dtensor
from gpt2repro.training.setup import Inputs, Runtime, Trainee
from gpt2repro.training.state import TrainState
from gpt2repro.training.step import optimizer_step


class Diverged(ValueError):
    """The weights, or the loss they give on validation data, are no longer finite: skipping
    steps cannot bring such a model back, and a checkpoint of it is worthless."""


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


def apply_step(
    trainee: Trainee, state: TrainState, loss: float, norm: float, spike_zscore: float | None
) -> bool:
    """Step the optimizer unless the step is bad; returns whether it was applied."""
    scaled = trainee.scaler.is_enabled()
    bad = is_bad_step(loss, norm, state.recent_losses, spike_zscore, scaled)
    if bad:
        state.skipped_steps += 1
        state.bad_streak += 1
    else:
        state.bad_streak = 0
        state.recent_losses = [*state.recent_losses[-49:], loss]
    optimizer_step(trainee.model, trainee.optimizer, trainee.scaler, apply=not bad)
    overflow = not bad and not math.isfinite(norm)  # only reachable with the scaler on
    state.overflow_steps += overflow
    return not bad and not overflow


def non_finite(
    model: torch.nn.Module, inputs: Inputs, batch: BatchConfig, rt: Runtime
) -> str | None:
    """What about the model is no longer finite, as a clause; None if nothing is.

    Finite weights can still be too large to compute with (an lr of 1e30 makes them ~1e29):
    the loss of one validation batch tells. A collective: every rank checks its own shard,
    and runs the forward (eagerly: a compiled model would recompile for it).
    """
    gpt = unwrap(model)
    names = [name for name, _ in gpt.named_parameters()]
    local = [p.to_local() if is_dtensor(p) else p for p in gpt.parameters()]  # type: ignore[attr-defined]
    flags = torch.stack([~torch.isfinite(t.detach()).all() for t in local]).float()
    bad = all_reduce_sum(flags, rt.dist)  # float: not every backend sums booleans
    broken = [name for name, b in zip(names, bad.tolist(), strict=True) if b]
    if broken:
        more = f" and {len(broken) - 1} more" if len(broken) > 1 else ""
        return f"weights ({broken[0]}{more}) hold inf or NaN"
    tokens = batch.micro_batch * batch.seq_len * rt.dist.world_size  # a micro-batch per rank
    with torch.compiler.set_stance("force_eager"):
        loss = split_loss(
            gpt,
            inputs.data_dir,
            "val",
            batch.micro_batch,
            batch.seq_len,
            tokens,
            rt.device,
            rt.dtype,
            rt.dist,
            tokenizer=inputs.tokenizer,
        )["loss"]
    return None if math.isfinite(loss) else f"loss on a validation batch is {loss}"


def check_finite(
    model: torch.nn.Module,
    inputs: Inputs,
    batch: BatchConfig,
    rt: Runtime,
    state: TrainState,
    lr: float,
    good: Path | None,
) -> None:
    """Raise `Diverged` if the model is no longer finite; `good` is the newest checkpoint
    known finite, `lr` the peak learning rate to advise lowering. Every rank calls it."""
    what = non_finite(model, inputs, batch, rt)
    if what is None:
        return
    again = (
        f"resume from the last good checkpoint, --checkpoint.resume {good}"
        if good is not None
        else "start again"
    )
    raise Diverged(
        f"step {state.step}: the model diverged: its {what}. Stopped before saving or sampling "
        f"it. Lower --optim.lr (now {lr:g}) and {again}; if the loss jumped at one "
        f"batch, check the data (`gpt2repro data verify {inputs.data_dir}`)."
    )
