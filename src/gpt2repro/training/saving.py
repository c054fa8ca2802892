"""Checkpoints of a run: written by every rank together (rank 0 writes), read back with
everything a bit-exact resume needs. The file format is checkpoint.py's; where they go is
run_dir.py's."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from gpt2repro import checkpoint as ckpt
from gpt2repro.config import BatchConfig
from gpt2repro.data.loader import TokenLoader
from gpt2repro.distributed import print0
from gpt2repro.run_dir import fallback_advice
from gpt2repro.train_state import restore_train_checkpoint, save_train_checkpoint
from gpt2repro.training.setup import Inputs, Outputs, Runtime, Trainee
from gpt2repro.training.stability import Diverged, non_finite
from gpt2repro.training.state import TrainState


def save(
    path: Path,
    trainee: Trainee,
    inputs: Inputs,
    out: Outputs,
    rt: Runtime,
    state: TrainState,
    loader: TokenLoader,
) -> Path:
    """Write a training checkpoint at `path`; every rank calls it, rank 0 writes."""
    meta = {"step": state.step, "train_state": asdict(state), "loader": loader.state_dict()}
    meta["config"] = json.loads(out.config_json)
    t = trainee
    save_train_checkpoint(path, t.model, inputs.tokenizer, t.optimizer, t.scaler, meta, rt.dist)
    return path


def save_step(
    trainee: Trainee,
    inputs: Inputs,
    out: Outputs,
    rt: Runtime,
    state: TrainState,
    loader: TokenLoader,
    keep_last: int,
) -> Path:
    """This step's checkpoint, keeping the newest `keep_last`."""
    path = save(out.run_dir.step_checkpoint(state.step), trainee, inputs, out, rt, state, loader)
    if rt.dist.is_main:
        out.run_dir.prune(keep_last, newest=path)
    return path


def resume(
    source: Path,
    trainee: Trainee,
    inputs: Inputs,
    rt: Runtime,
    loader: TokenLoader,
    batch: BatchConfig,
) -> TrainState:
    """Restore weights, optimizer, scaler, loader position and RNGs from `source`, and check
    that its weights still compute (the later checks take it as good)."""
    t = trainee
    try:
        meta = restore_train_checkpoint(source, t.model, t.optimizer, t.scaler, rt.dist)
    except ckpt.DamagedCheckpoint as e:  # every rank reads the same files, so all raise
        raise ckpt.DamagedCheckpoint(f"{e} {fallback_advice(source)}") from None
    if what := non_finite(t.model, inputs, batch, rt):  # a run that saved whatever it had
        raise Diverged(f"{source}: the model in it diverged: its {what}. {fallback_advice(source)}")
    note = loader.load_state_dict(meta["loader"])
    print0(rt.dist, f"resumed from {source} at step {meta['step']}")
    if note:
        print0(rt.dist, f"note: {note}")
    return TrainState(**meta["train_state"])
