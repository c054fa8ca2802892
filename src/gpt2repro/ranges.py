"""The allowed range of every numeric setting of a training config, by dotted name.

config.py's `validate()` checks each field against its entry here; the table is kept apart
so that config.py stays the shape of the config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """The values a numeric setting may take: finite, at least `low` (above it if `low_open`)
    and below `high`; `note` says what a special value means."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    note: str = ""
    high_closed: bool = False

    def holds(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value <= self.high if self.high_closed else value < self.high
        return math.isfinite(value) and above and below

    def rule(self, value: float) -> str:
        """What `value` (which does not hold) must be instead, e.g. "must be finite and >= 0"."""
        parts = [] if math.isfinite(value) else ["finite"]
        if self.high < math.inf:
            close = "]" if self.high_closed else ")"
            parts.append(
                f"in {'(' if self.low_open else '['}{_num(self.low)}, {_num(self.high)}{close}"
            )
        elif self.low_open and self.low == 0:
            parts.append("positive")
        elif self.low > -math.inf:
            parts.append(f"{'>' if self.low_open else '>='} {_num(self.low)}")
        text = "must be " + " and ".join(parts)
        return f"{text} ({self.note})" if self.note else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


COUNT = Range(1)
NON_NEGATIVE = Range(0)
POSITIVE = Range(0, low_open=True)
FRACTION = Range(0, 1)  # a probability or a moving-average factor: 1 would never forget
INTERVAL = Range(0, note="0: only at the end")

RANGES: dict[str, Range] = {
    # GPTConfig checks itself when built; a config changed afterwards is checked here too.
    "model.vocab_size": COUNT,
    "model.block_size": COUNT,
    "model.n_layer": COUNT,
    "model.n_head": COUNT,
    "model.n_embd": COUNT,
    "model.dropout": FRACTION,
    "model.pad_vocab_to": Range(1, note="1: no padding"),
    "model.rope_base": Range(1, low_open=True),  # base 1 would not rotate at all
    "model.logit_softcap": Range(0, note="0: off"),
    "optim.lr": POSITIVE,
    "optim.min_lr": NON_NEGATIVE,
    "optim.warmup_steps": NON_NEGATIVE,
    "optim.decay_steps": Range(0, note="or None: the last step"),
    "optim.weight_decay": NON_NEGATIVE,
    "optim.beta1": FRACTION,
    "optim.beta2": FRACTION,
    "optim.eps": POSITIVE,
    "optim.grad_clip": Range(0, note="0: no clipping"),
    "optim.decay_fraction": Range(0, 1, high_closed=True),
    "optim.muon_lr": POSITIVE,
    "optim.muon_momentum": FRACTION,
    "optim.muon_momentum_start": FRACTION,
    "optim.muon_momentum_warmup_steps": NON_NEGATIVE,
    "optim.muon_weight_decay": NON_NEGATIVE,
    "optim.embed_lr": Range(0, low_open=True, note="or None: lr"),
    "optim.head_lr": Range(0, low_open=True, note="or None: lr"),
    "batch.tokens_per_step": COUNT,
    "batch.micro_batch": COUNT,
    "batch.seq_len": COUNT,
    "run.max_steps": COUNT,
    "run.max_minutes": Range(0, low_open=True, note="or None: no limit"),
    # NumPy takes seeds below 2**32, and rank r seeds with seed + r: 2**31 leaves room for ranks.
    "run.seed": Range(0, 2**31),
    "eval.interval": INTERVAL,
    "eval.val_tokens": Range(1, note="and at least batch.seq_len x world size"),
    "eval.sample_interval": INTERVAL,
    "eval.sample_tokens": COUNT,  # the end of every run writes samples
    "eval.hellaswag_limit": Range(1, note="or None: all"),
    "checkpoint.interval": INTERVAL,
    "checkpoint.keep_last": COUNT,
    "log.interval": INTERVAL,
    "stability.max_bad_steps": COUNT,
    "stability.spike_zscore": Range(0, low_open=True, note="or None: off"),
}
"""Allowed range of every numeric field of TrainConfig, by dotted name; a test fails for a
numeric field without an entry (validate() then checks only that it is finite)."""
