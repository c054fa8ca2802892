"""fp16 with a GradScaler through training's own step functions, on the CPU.

Training refuses fp16 on the CPU at the boundary (`resolve_dtype`), so these tests build the
pieces of a Session by hand and run `train_step` (scaled backward, unscale, clip) and
`apply_step` (skip on overflow, scaler.update) with fp16 autocast and a CPU GradScaler.
tests/gpu/test_cuda.py runs fp16 end to end on a GPU.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from gpt2repro.config import OptimConfig, StabilityConfig
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import resolve_dtype
from gpt2repro.tokenizer import GPT2Tokenizer
from gpt2repro.train_state import restore_train_checkpoint, save_train_checkpoint
from gpt2repro.training.optimizer import build_optimizer
from gpt2repro.training.stability import apply_step
from gpt2repro.training.state import TrainState
from gpt2repro.training.step import train_step

CPU = torch.device("cpu")
TOLERANCE = 2e-3  # nats; fp16 keeps 11 significant bits (measured: 1.2e-4 over 20 steps)


class Batches:
    """A learnable stream (each token the previous plus a small step, mod 128), two micro-batches."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        base = torch.randint(0, 128, (8, 1), generator=g)
        seq = (base + torch.randint(0, 3, (8, 33), generator=g).cumsum(dim=1)) % 128
        self.x, self.y = seq[:, :-1], seq[:, 1:]  # (8, 32)
        self.calls = 0

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(4 * (self.calls % 2), 4 * (self.calls % 2) + 4)
        self.calls += 1
        return self.x[rows], self.y[rows]


def session(dtype: str, **scaler: float) -> SimpleNamespace:
    """What train_step and apply_step read from a Session; the scaler is on for fp16 only."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=128, block_size=32, n_layer=2, n_head=2, n_embd=64))
    return SimpleNamespace(
        model=model,
        optimizer=build_optimizer(model, OptimConfig(lr=3e-3, weight_decay=0.1), CPU),
        scaler=torch.amp.GradScaler("cpu", enabled=dtype == "fp16", **scaler),  # type: ignore[arg-type]
        cfg=SimpleNamespace(optim=OptimConfig(grad_clip=1.0), stability=StabilityConfig()),
        device=CPU,
        dtype=dtype,
    )


def step(s: SimpleNamespace, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """The real forward/backward/unscale/clip of two micro-batches."""
    return train_step(s.model, s.optimizer, s.scaler, batches.next_batch, 2, CPU, s.dtype, 1.0)


def run_steps(s: SimpleNamespace, steps: int, batches: Batches | None = None) -> list[float]:
    """`steps` optimizer steps of two micro-batches each; returns (loss, grad norm) pairs, flat."""
    batches = batches or Batches()
    state = TrainState()
    out = []
    for _ in range(steps):
        loss, norm = step(s, batches)
        apply_step(s, state, loss.item(), norm.item(), None)  # type: ignore[arg-type]
        out += [loss.item(), norm.item()]
    return out


def test_training_refuses_fp16_on_cpu() -> None:
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_dtype("fp16", CPU)


def test_fp16_with_grad_scaler_tracks_fp32() -> None:
    fp32 = run_steps(session("fp32"), 8)
    s = session("fp16")
    fp16 = run_steps(s, 8)
    losses32, losses16 = fp32[::2], fp16[::2]
    assert losses32[-1] < losses32[0] - 1.0  # it learns, so the comparison covers a moving curve
    assert max(abs(a - b) for a, b in zip(losses32, losses16, strict=True)) < TOLERANCE
    # The norm is taken after unscaling (else it would read 65,536 times larger) and clipped.
    for a, b in zip(fp32[1::2], fp16[1::2], strict=True):
        assert b == pytest.approx(a, rel=1e-2)
    assert fp32 != fp16  # fp16 really ran
    assert s.scaler.get_scale() == 2.0**16  # no overflow at the default scale


def test_overflow_skips_the_step_and_backs_off() -> None:
    """A loss scale of 2^40 overflows fp16 gradients: no update, the scale halves each time."""
    s = session("fp16", init_scale=2.0**40)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    batches, state = Batches(), TrainState()
    for _ in range(3):
        loss, norm = step(s, batches)
        assert not math.isfinite(norm.item())
        assert not apply_step(s, state, loss.item(), norm.item(), None)  # type: ignore[arg-type]
    # Counted apart from bad steps: an overflow is routine for fp16 and must not end the run.
    assert (state.overflow_steps, state.skipped_steps, state.bad_streak) == (3, 0, 0)
    for name, value in s.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert s.scaler.get_scale() == 2.0**37
    assert all(st["step"] == 0 for st in s.optimizer.state.values())  # AdamW never stepped
    # Once the scale is small enough (2^15 here), the same loop trains again.
    s.scaler.update(2.0**15)
    run_steps(s, 1)
    assert not torch.equal(
        s.model.transformer.h[0].mlp.c_fc.weight, before["transformer.h.0.mlp.c_fc.weight"]
    )


def test_scaler_state_survives_a_checkpoint(tmp_path: Path) -> None:
    """Scale, growth settings and tracker come back bit for bit; the resumed run steps alike."""
    s = session("fp16", init_scale=2.0**20, growth_factor=1.5, growth_interval=2)
    run_steps(s, 6)  # overflows back the scale off, then good steps grow it by 1.5
    saved = s.scaler.state_dict()
    assert not math.log2(saved["scale"]).is_integer(), saved
    path = save_train_checkpoint(
        tmp_path / "ck", s.model, GPT2Tokenizer(), s.optimizer, s.scaler, {"step": 6}
    )
    fresh = session("fp16")  # default scale and growth settings until restored
    restore_train_checkpoint(path, fresh.model, fresh.optimizer, fresh.scaler)
    assert fresh.scaler.state_dict() == saved
    assert run_steps(fresh, 3) == run_steps(s, 3)
    assert fresh.scaler.state_dict() == s.scaler.state_dict()
