"""AdamW with selective weight decay, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from gpt2repro.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Decay matrices (linear weights, embeddings); never biases or LayerNorm gains.

    GPT-2/GPT-3 decay only the >= 2-D tensors: shrinking a gain or bias towards zero
    has no regularising meaning. The tied head appears once (named_parameters dedups).
    """
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def fused_by_default(device_type: str) -> bool:
    """Whether AdamW runs its fused kernel when OptimConfig.fused is None."""
    return (
        device_type in ("cuda", "cpu")
        and "fused" in inspect.signature(torch.optim.AdamW).parameters
    )


def build_optimizer(model: nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over `param_groups`; the fused kernel (one pass over each tensor) on CUDA and CPU.

    On CPU the fused step is ~4x faster than the default multi-tensor one for 124M
    parameters (0.25 vs 0.98 s on one core), ~15% of a whole 124M training step.
    """
    fused = cfg.fused if cfg.fused is not None else fused_by_default(device.type)
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
    )


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based).

    Linear warmup (step+1)/warmup * lr, then a half cosine from lr to min_lr, reached
    at `decay_steps` (default: the last step), and min_lr after that.
    """
    decay_steps = cfg.decay_steps if cfg.decay_steps is not None else max_steps
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
