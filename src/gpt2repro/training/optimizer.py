"""The optimizers (AdamW with selective weight decay; Muon for the blocks' matrices beside
AdamW for the rest) and the learning-rate schedules (warmup + cosine, warmup-stable-decay).

Every parameter group carries its peak learning rate as `peak_lr`; the schedule gives one
multiplier per step, so groups with different peaks (Muon's matrices, the embeddings, an
untied head) rise, hold and decay together.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

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


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, device: torch.device
) -> torch.optim.Optimizer:
    """AdamW over `param_groups`, or `MuonAdamW` when cfg.optimizer is "muon".

    AdamW runs its fused kernel (one pass over each tensor) on CUDA and CPU; on CPU it is
    several times faster than the default multi-tensor one (benchmarks/results).
    """
    if cfg.optimizer == "muon":
        return build_muon(model, cfg, device)
    fused = cfg.fused if cfg.fused is not None else fused_by_default(device.type)
    groups = [g | {"peak_lr": cfg.lr} for g in param_groups(model, cfg.weight_decay)]
    return torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused or None
    )


def muon_params(model: nn.Module) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
    """(the blocks' 2-D matrices for Muon, the rest for AdamW by kind: embed, head, vector).

    Muon orthogonalises a hidden layer's update; embeddings (a lookup, one row per token) and
    the head (whose rows are per-token outputs) are not hidden layers, so AdamW keeps them
    (Jordan et al. 2024, modded-nanogpt), with every gain and bias.
    """
    matrices: list[nn.Parameter] = []
    rest: dict[str, list[nn.Parameter]] = {"embed": [], "head": [], "vector": []}
    for name, p in model.named_parameters():  # a tied head appears once, as the embedding
        if not p.requires_grad:
            continue
        if ".h." in f".{name}" and p.dim() == 2:
            matrices.append(p)
        elif name.endswith(("wte.weight", "wpe.weight")):
            rest["embed"].append(p)
        elif name.endswith("lm_head.weight"):
            rest["head"].append(p)
        else:
            rest["vector"].append(p)
    return matrices, rest


def build_muon(model: nn.Module, cfg: OptimConfig, device: torch.device) -> MuonAdamW:
    """torch.optim.Muon (Nesterov, Keller's shape scaling) over the blocks' matrices; AdamW
    over embeddings (embed_lr), an untied head (head_lr) and vectors (lr, no decay)."""
    matrices, rest = muon_params(model)
    muon = torch.optim.Muon(
        [{"params": matrices, "peak_lr": cfg.muon_lr}],
        lr=cfg.muon_lr,
        weight_decay=cfg.muon_weight_decay,
        momentum=cfg.muon_momentum,
        nesterov=True,
        adjust_lr_fn="original",
    )
    adam_groups = [
        {
            "params": rest["embed"],
            "peak_lr": cfg.embed_lr or cfg.lr,
            "weight_decay": cfg.weight_decay,
        },
        {
            "params": rest["head"],
            "peak_lr": cfg.head_lr or cfg.lr,
            "weight_decay": cfg.weight_decay,
        },
        {"params": rest["vector"], "peak_lr": cfg.lr, "weight_decay": 0.0},
    ]
    fused = cfg.fused if cfg.fused is not None else fused_by_default(device.type)
    adamw = torch.optim.AdamW(
        [g | {"lr": g["peak_lr"]} for g in adam_groups if g["params"]],
        lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2),
        eps=cfg.eps,
        fused=fused or None,
    )
    return MuonAdamW(adamw, muon)


class MuonAdamW(torch.optim.Optimizer):
    """AdamW and Muon stepped as one optimizer: `param_groups` lists both's groups (the
    schedule, the grad scaler and clipping see every parameter), and `state_dict` is one
    ordinary optimizer state dict over AdamW's parameters then Muon's, so checkpoints,
    FSDP-free gathering and resume treat it like any torch optimizer."""

    def __init__(self, adamw: torch.optim.AdamW, muon: torch.optim.Optimizer) -> None:
        # Optimizer.__init__ is not called: the groups and state live in the two parts.
        self.parts: tuple[torch.optim.Optimizer, ...] = (adamw, muon)
        self.defaults = {}

    @property  # type: ignore[override]
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [g for part in self.parts for g in part.param_groups]

    @property  # type: ignore[override]
    def state(self) -> dict[Any, Any]:  # type: ignore[override]
        return {k: v for part in self.parts for k, v in part.state.items()}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        assert closure is None, "MuonAdamW takes no closure"
        for part in self.parts:
            part.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        state: dict[int, Any] = {}
        groups: list[dict[str, Any]] = []
        offset = 0
        for part in self.parts:
            sd = part.state_dict()
            state |= {i + offset: v for i, v in sd["state"].items()}
            groups += [
                g | {"params": [i + offset for i in g["params"]]} for g in sd["param_groups"]
            ]
            offset += sum(len(g["params"]) for g in sd["param_groups"])
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        groups, offset = list(state_dict["param_groups"]), 0
        if len(groups) != len(self.param_groups):
            raise ValueError(
                f"optimizer state has {len(groups)} parameter groups, this MuonAdamW has "
                f"{len(self.param_groups)}: it was saved with another optimizer or model"
            )
        for part in self.parts:
            mine, groups = groups[: len(part.param_groups)], groups[len(part.param_groups) :]
            n = sum(len(g["params"]) for g in mine)
            part.load_state_dict(
                {
                    "state": {
                        i - offset: v
                        for i, v in state_dict["state"].items()
                        if offset <= i < offset + n
                    },
                    "param_groups": [
                        g | {"params": [i - offset for i in g["params"]]} for g in mine
                    ],
                }
            )
            offset += n


def lr_at(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Learning rate (of a group whose peak is cfg.lr) for optimizer step `step` (0-based).

    Both schedules warm up linearly, (step+1)/warmup * lr. cosine: then a half cosine from
    lr to min_lr, reached at `decay_steps` (default: the last step), and min_lr after that.
    wsd: then lr until the last `decay_fraction` of max_steps, and a straight line from lr
    to min_lr across that stretch (reaching min_lr at max_steps, as modded-nanogpt).
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "wsd":
        decay_start = max_steps - cfg.decay_fraction * max_steps
        if step < decay_start:
            return cfg.lr
        progress = min(1.0, (step - decay_start) / (max_steps - decay_start))
        return cfg.lr + progress * (cfg.min_lr - cfg.lr)
    decay_steps = cfg.decay_steps if cfg.decay_steps is not None else max_steps
    if step >= decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def muon_momentum_at(step: int, cfg: OptimConfig) -> float:
    """Muon's momentum at step `step`: linear from muon_momentum_start to muon_momentum."""
    if step >= cfg.muon_momentum_warmup_steps:
        return cfg.muon_momentum
    frac = step / cfg.muon_momentum_warmup_steps
    return cfg.muon_momentum_start + frac * (cfg.muon_momentum - cfg.muon_momentum_start)


def set_lr(optimizer: torch.optim.Optimizer, lr: float, peak: float | None = None) -> None:
    """Every group at `lr`, or, given the schedule's `peak`, at its own peak_lr * lr / peak."""
    for group in optimizer.param_groups:
        group_peak = group.get("peak_lr", peak)
        # A group at the schedule's own peak takes `lr` itself: x * (lr / x) can be 1 ulp off.
        if peak is None or group_peak is None or group_peak == peak:
            group["lr"] = lr
        else:
            group["lr"] = group_peak * (lr / peak)


def apply_schedule(
    optimizer: torch.optim.Optimizer, step: int, cfg: OptimConfig, max_steps: int
) -> float:
    """Set every group's learning rate (and Muon's momentum) for `step`; returns the lr of a
    group whose peak is cfg.lr, the figure the logs report."""
    lr = lr_at(step, cfg, max_steps)
    set_lr(optimizer, lr, cfg.lr)
    if isinstance(optimizer, MuonAdamW):
        for group in optimizer.parts[1].param_groups:
            group["momentum"] = muon_momentum_at(step, cfg)
    return lr
