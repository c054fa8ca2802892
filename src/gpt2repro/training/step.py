"""One optimizer step, with explicit parts: what `train`, `bench train` and the memory
probe all run, so a benchmark or a memory estimate measures the step that trains."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gpt2repro.parallelize import clip_grad_norm, grad_sync, train_forward_context, zero_grads

Batch = tuple[torch.Tensor, torch.Tensor]


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    next_batch: Callable[[], Batch],
    accum: int,
    device: torch.device,
    dtype: str,
    grad_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward/backward over `accum` micro-batches from `next_batch`, gradients synchronised
    once (parallelize.grad_sync), unscaled and clipped to `grad_clip` (0: no clipping);
    returns (mean loss, global grad norm) as tensors. The optimizer has not stepped yet."""
    total = torch.zeros((), device=device)
    for micro in range(accum):
        x, y = next_batch()
        with grad_sync(model, sync=micro == accum - 1):
            with train_forward_context(device, dtype, x.size(1)):
                loss = model(x, y) / accum  # mean over the whole step's tokens
            scaler.scale(loss).backward()
        total += loss.detach()
    scaler.unscale_(optimizer)
    return total, clip_grad_norm(model, grad_clip if grad_clip > 0 else math.inf)


def optimizer_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    apply: bool = True,
) -> None:
    """Apply the gradients (unless `apply` is False: a skipped step) and clear them."""
    if apply:
        scaler.step(optimizer)  # itself skips the update when fp16 gradients overflowed
    scaler.update()
    zero_grads(model, optimizer)
