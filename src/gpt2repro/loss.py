"""Cross-entropy of the language-model head without the logits of the whole micro-batch.

The naive loss keeps, for a micro-batch of N tokens over GPT-2's 50,304 padded vocabulary,
the logits in the compute dtype, their fp32 copy and the log-softmax for backward: ~10 bytes
x N x V, 3.3 GB at N = 16 x 1024 before the gradient of the same size appears. Here the
head runs over chunks of tokens; each chunk's softmax is turned straight into the
gradients of the loss with respect to the hidden states and the head weight (the loss is a
mean, so its gradient is known in the forward pass), and only those gradients are kept:
N x C + V x C floats. The same trick as Liger-Kernel's fused linear cross-entropy, in plain
torch so that it runs on every device and under torch.compile.

Plain torch only: model.py imports this module.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

CHUNK_BYTES = {"cpu": 1 << 23, "default": 1 << 28}
"""Budget for one chunk's fp32 logits. On CPU 8 MiB keeps a chunk's softmax passes in cache
(benchmarks/results/2026-11-21_notes-loss-chunk-size_cpu-2core-intel-amx.md); on GPUs 256 MiB
(1,334 tokens over GPT-2's padded vocabulary) keeps the head's matmuls large."""


MIN_CHUNK_TOKENS = 512
"""Fewer tokens per chunk make the head-weight gradient, accumulated once per chunk over the
whole (V, C) matrix, cost more in memory traffic than its matmul: 2 x tokens FLOPs per element."""


def chunk_tokens_for(vocab_rows: int, device_type: str) -> int:
    """Tokens per chunk so that one chunk's fp32 logits stay within the device's budget, but
    never fewer than MIN_CHUNK_TOKENS: below that the head's matmuls get too thin to run fast,
    so a large vocabulary exceeds a small budget (512 x 50,304 fp32 logits are 103 MB)."""
    budget = CHUNK_BYTES.get(device_type, CHUNK_BYTES["default"])
    return max(MIN_CHUNK_TOKENS, budget // (4 * vocab_rows))


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the head's matmul would run in here: autocast's if active, else the input's."""
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


def _chunk_logits(
    x: torch.Tensor, w: torch.Tensor, vocab_size: int, softcap: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """fp32 logits (n, V_padded) of one chunk, padded columns at -inf so they get no mass;
    with a soft cap c, the capped logits c * tanh(z / c) and tanh(z / c) itself (backward's
    factor 1 - tanh^2), else None."""
    logits = (x @ w.t()).float()
    tanh = None
    if softcap > 0:
        # In place on the fp32 copy: each pass over the (n, V) chunk costs as much as the
        # loss's own softmax passes.
        tanh = logits.mul_(1 / softcap).tanh_()
        logits = tanh * softcap
    if logits.size(1) > vocab_size:
        logits[:, vocab_size:] = float("-inf")
    return logits, tanh


def _chunked_forward(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk: int,
    grads: bool,
    softcap: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Summed loss, the count of scored tokens and, if `grads`, the gradients of the sum
    with respect to `x` and `weight` (fp32; dividing by the count is left to the caller)."""
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        w = weight.to(dtype)
        valid_all = targets != -1
        count = valid_all.sum().clamp(min=1).float()  # a tensor: no host synchronisation
        total = torch.zeros((), dtype=torch.float32, device=x.device)
        grad_x = torch.empty_like(x, dtype=torch.float32) if grads else None
        grad_w: torch.Tensor | None = None
        for s in range(0, x.size(0), chunk):
            xc = x[s : s + chunk].to(dtype)
            t = targets[s : s + chunk]
            valid = valid_all[s : s + chunk, None]  # (n, 1)
            safe_t = t.clamp(min=0)[:, None]
            logits, tanh = _chunk_logits(xc, w, vocab_size, softcap)
            logp = torch.log_softmax(logits, dim=1)  # (n, Vp)
            del logits
            total = total - (logp.gather(1, safe_t) * valid).sum()
            if grads:
                assert grad_x is not None
                # d(sum of losses)/d(logits) = softmax - one_hot. Ignored rows are masked
                # on the narrow (n, C) side of the matmuls, not on the (n, V) probabilities;
                # the 1/count of the mean waits for backward, so fp16 cannot underflow here.
                probs = logp.exp_()
                probs.scatter_add_(1, safe_t, torch.full_like(safe_t, -1, dtype=probs.dtype))
                if tanh is not None:  # chain rule through c * tanh(z / c)
                    probs.mul_(tanh.square_().neg_().add_(1))
                d = probs.to(dtype)
                grad_x[s : s + chunk] = (d @ w) * valid
                part = d.t() @ (xc * valid)  # (Vp, C)
                # fp32 accumulator; the first chunk initialises it (no separate zero fill).
                grad_w = part.float() if grad_w is None else grad_w.add_(part)
                del probs, d, part
            # Unbound before the next chunk's logits are allocated: otherwise this chunk's
            # (n, V) tensors stay alive beside them (eager only; compiled graphs free them).
            del logp, tanh
    return total, count, grad_x, grad_w


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        targets: torch.Tensor,
        vocab_size: int,
        chunk: int,
        softcap: float,
    ) -> torch.Tensor:
        total, count, grad_x, grad_w = _chunked_forward(
            x, weight, targets, vocab_size, chunk, True, softcap
        )
        ctx.save_for_backward(grad_x, grad_w, count)
        ctx.dtypes = (x.dtype, weight.dtype)
        return total / count

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_x, grad_w, count = ctx.saved_tensors
        scale = grad_loss / count
        # In place: a second (V, C) buffer would be the largest allocation left. The graph is
        # freed after this backward, so nothing reads these tensors again.
        x_dtype, w_dtype = ctx.dtypes
        return (
            grad_x.mul_(scale).to(x_dtype),
            grad_w.mul_(scale).to(w_dtype),
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    x: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    vocab_size: int,
    chunk_tokens: int | None = None,
    softcap: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy of softmax(x @ weight[:vocab_size].T) against `targets` (-1 = ignore).

    x: (N, C) hidden states; weight: (V_padded, C), rows past `vocab_size` never get
    probability; targets: (N,). Equals `F.cross_entropy(lm_head(x)[:, :vocab_size].float(),
    targets, ignore_index=-1)` up to rounding, in the autocast dtype if one is active; with
    `softcap` c > 0 the logits are first capped as c * tanh(z / c).
    """
    chunk = chunk_tokens or chunk_tokens_for(weight.size(0), x.device.type)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        loss: torch.Tensor = _LinearCrossEntropy.apply(
            x, weight, targets, vocab_size, chunk, softcap
        )
        return loss
    total, count, _, _ = _chunked_forward(x, weight, targets, vocab_size, chunk, False, softcap)
    return total / count


class LinearCrossEntropy(nn.Module):
    """`linear_cross_entropy` as a parameterless module of the model (no state_dict keys).

    A module so that it can be compiled in place from outside: under FSDP only modules are
    compiled (each block, and this), and the head's softmax passes over (chunk, V) logits
    would otherwise run eagerly, one memory pass per op.
    """

    def __init__(self, vocab_size: int, softcap: float = 0.0) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.softcap = softcap

    def forward(self, x: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(x, weight, targets, self.vocab_size, softcap=self.softcap)
