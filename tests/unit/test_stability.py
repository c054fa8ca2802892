"""Bad steps, on parts a test builds: which losses are bad, and a skipped step leaves the
weights and the AdamW state bit-identical (the loop around them: tests/integration/test_train.py)."""

from __future__ import annotations

import copy

import torch

from gpt2repro.config import OptimConfig
from gpt2repro.model import GPT
from gpt2repro.training.optimizer import build_optimizer
from gpt2repro.training.setup import Trainee
from gpt2repro.training.stability import apply_step, is_bad_step
from gpt2repro.training.state import TrainState
from gpt2repro.training.step import train_step

CPU = torch.device("cpu")


def test_spike_detection() -> None:
    recent = [3.0 + 0.01 * (i % 5) for i in range(30)]
    assert not is_bad_step(3.05, 1.0, recent, 4.0, scaled=False)
    assert is_bad_step(3.5, 1.0, recent, 4.0, scaled=False)
    assert not is_bad_step(3.5, 1.0, recent, None, scaled=False)  # off
    assert is_bad_step(float("inf"), 1.0, recent, 4.0, scaled=False)
    assert is_bad_step(3.0, float("nan"), recent, 4.0, scaled=False)
    assert not is_bad_step(3.0, float("nan"), recent, 4.0, scaled=True)


def step(trainee: Trainee, state: TrainState, poisoned: bool = False) -> bool:
    """One training step as the loop takes it, on random tokens; a poisoned one's loss is NaN."""
    vocab, T = trainee.model.config.vocab_size, trainee.model.config.block_size  # type: ignore[union-attr]
    x, y = torch.randint(0, vocab, (2, T)), torch.randint(0, vocab, (2, T))  # B=2, T
    t = trainee
    loss, norm = train_step(t.model, t.optimizer, t.scaler, lambda: (x, y), 1, CPU, "fp32", 1.0)
    value = float("nan") if poisoned else loss.item()
    return apply_step(trainee, state, value, norm.item(), spike_zscore=None)


def test_a_skipped_step_leaves_weights_and_adamw_state_bit_identical(tiny_model: GPT) -> None:
    model = tiny_model.train()
    trainee = Trainee(
        model,
        build_optimizer(model, OptimConfig(lr=1e-2), CPU),
        torch.amp.GradScaler("cpu", enabled=False),
    )
    state = TrainState()
    assert step(trainee, state) and step(trainee, state)  # AdamW has stepped before
    params = [p.detach().clone() for p in model.parameters()]
    moments = copy.deepcopy(trainee.optimizer.state_dict()["state"])

    assert not step(trainee, state, poisoned=True)
    after = trainee.optimizer.state_dict()["state"]
    assert all(torch.equal(a, p) for a, p in zip(params, model.parameters(), strict=True))
    assert moments.keys() == after.keys() and moments
    for pid, entry in moments.items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(entry[key], after[pid][key]), (pid, key)
    assert all(p.grad is None for p in model.parameters())  # the bad gradients are gone
    assert (state.skipped_steps, state.bad_streak, len(state.recent_losses)) == (1, 1, 2)

    assert step(trainee, state)  # a good step applies again, and ends the streak
    assert not all(torch.equal(a, p) for a, p in zip(params, model.parameters(), strict=True))
    assert (state.skipped_steps, state.bad_streak, len(state.recent_losses)) == (1, 0, 3)
