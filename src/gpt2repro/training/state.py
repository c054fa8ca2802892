"""The run's mutable state (checkpointed in every meta.json) and what a run returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path


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
    """finished, time_limit, signal, unstable or diverged."""
    checkpoint: Path | None
    signal: int | None = None
    """The signal that stopped the run (SIGINT, SIGTERM), if one did."""
