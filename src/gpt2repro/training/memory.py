"""Peak memory of one training step, counted from what the step holds at once.

`train --dry-run` prints this estimate and the largest micro-batch that fits the device.
The terms follow this repository's code rather than a rule of thumb, so they are checked
against torch itself (tests/unit/test_memory.py: what autograd saves, and the allocation
trace of whole steps) and against a measured CPU run (tests/integration/
test_memory_estimate.py). A change to the model, loss.py or the loop shows up there first.

One rank holds, in eager mode with dropout 0 (every preset):
- fp32 parameters (4 B each, padded vocabulary rows included), gradients (4 B; absent in
  the first micro-step's forward, as the loop zeroes with set_to_none=True), AdamW's two
  moments (8 B) and, under autocast, the bf16/fp16 copy of each block's Linear weights
  (2 B), which autocast caches in forward and backward keeps;
- the activations autograd saves for backward, and the loss head's two saved gradients;
- the short-lived buffers of the step's busiest moment: the loss head's forward, the
  backward of the last block, the end of backward and the optimizer step, or (with the
  math attention kernel) the last block's attention forward.
FSDP and DDP change who holds what (`busy_moments`); those terms are reasoned, not measured.

It counts tensor bytes, what CUDA's max_memory_allocated reports. Left to the caller
(`needed_bytes`): the torch runtime, and on CPU the freed blocks glibc's malloc keeps.
torch.compile recomputes pointwise ops instead of saving them: there it is an upper bound.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from gpt2repro.config import TrainConfig
from gpt2repro.loss import chunk_tokens_for
from gpt2repro.model import GPTConfig
from gpt2repro.parallelize import CPU_MATH_ATTENTION_MAX_T
from gpt2repro.training.optimizer import fused_by_default

DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FP32 = 4
INT64 = 8
DEVICE_FRACTION = 0.9
"""Share of a device's memory a run may plan for: headroom for fragmentation and other users."""
RUNTIME_BYTES = {"cpu": 350_000_000, "cuda": 500_000_000}
"""Memory a training process needs besides the step's tensors. CPU: the RSS of imported
torch (~0.23 GB) plus the kernels and thread pools the first step loads (~0.1 GB),
measured on Linux; CUDA: the context, ~0.5 GB."""
CPU_MALLOC_SLACK = 2.0
"""Peak RSS over the tensors a CPU step allocates and frees (all but parameters and AdamW
state): glibc's malloc keeps freed blocks below its self-raising mmap threshold. Measured
1.2-1.8x in tests/integration/test_memory_estimate.py's shapes with default settings,
~1.0x with MALLOC_MMAP_THRESHOLD_=1048576."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes held by one rank at the step's peak, by kind; `phase` says when the peak falls."""

    params: int
    grads: int
    optimizer: int
    weight_copies: int
    activations: int
    loss_head: int
    transient: int
    phase: str

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "phase")

    def breakdown(self) -> str:
        parts = [(f.name.replace("_", " "), getattr(self, f.name)) for f in fields(self)]
        return " + ".join(f"{name} {fmt_bytes(n)}" for name, n in parts if name != "phase")


def fmt_bytes(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def block_linear_params(cfg: GPTConfig) -> int:
    """Weights and biases of one block's four Linear layers (c_attn, c_proj, c_fc, c_proj)."""
    C, bias = cfg.n_embd, int(cfg.bias)
    return 12 * C * C + 9 * C * bias


def block_params(cfg: GPTConfig) -> int:
    """All parameters of one block: two LayerNorms and four Linear layers."""
    return 2 * cfg.n_embd * (1 + int(cfg.bias)) + block_linear_params(cfg)


def allocated_params(cfg: GPTConfig) -> int:
    """Parameters as allocated: the padded vocabulary rows included, the tied head once."""
    C = cfg.n_embd
    embeddings = (cfg.padded_vocab_size + cfg.block_size) * C
    ln_f = C * (1 + int(cfg.bias))
    return embeddings + cfg.n_layer * block_params(cfg) + ln_f


def uses_math_attention(device_type: str, dtype: str, seq_len: int) -> bool:
    """Whether training runs SDPA's math kernel here (parallelize.train_forward_context)."""
    return device_type == "cpu" and dtype == "bf16" and seq_len <= CPU_MATH_ATTENTION_MAX_T


def activation_bytes_per_token(
    cfg: GPTConfig, dtype: str, seq_len: int, math_attention: bool = False
) -> int:
    """Bytes one block saves for backward per token, in fp32 or under bf16/fp16 autocast."""
    C, d = cfg.n_embd, DTYPE_BYTES[dtype]
    # ln_1 and ln_2 save their input, mean and rstd; autocast runs LayerNorm in fp32.
    layernorms = 2 * (FP32 * C + 2 * FP32)
    # Inputs of c_attn (ln_1's output), attn.c_proj (the attention output), c_fc and
    # mlp.c_proj (GELU's output). The flash kernel's output is already (B, T, nh, hs) in
    # memory, so the transpose before c_proj copies nothing.
    linear_inputs = d * (C + C + C + 4 * C)
    if math_attention:
        # The math kernel upcasts to fp32 and keeps q, k, v and the softmax, nh x T per token.
        attention = FP32 * (3 * C + cfg.n_head * seq_len)
    else:
        # The flash kernel keeps q, k, v (views of c_attn's output) and a logsumexp per head.
        attention = d * 3 * C + FP32 * cfg.n_head
    gelu_input = d * 4 * C  # c_fc's output
    return layernorms + linear_inputs + attention + gelu_input


def activation_bytes(
    cfg: GPTConfig, micro_batch: int, seq_len: int, dtype: str, math_attention: bool = False
) -> int:
    """Everything the model saves for backward except the loss head: embeddings, blocks, ln_f."""
    N = micro_batch * seq_len
    embeddings = INT64 * (N + seq_len)  # token ids and positions, kept by the two lookups
    per_block = activation_bytes_per_token(cfg, dtype, seq_len, math_attention)
    ln_f = (FP32 * cfg.n_embd + 2 * FP32) * N
    return embeddings + cfg.n_layer * per_block * N + ln_f


def loss_head_saved_bytes(cfg: GPTConfig, n_tokens: int) -> int:
    """linear_cross_entropy keeps d loss/d hidden (N x C) and d loss/d head weight (Vp x C),
    both fp32, and the count of scored tokens."""
    return FP32 * cfg.n_embd * (n_tokens + cfg.padded_vocab_size) + FP32


def loss_head_transient(cfg: GPTConfig, n_tokens: int, dtype: str, device_type: str) -> int:
    """The most loss.py's chunked forward holds at once beyond the two gradients it saves.

    Per chunk of n tokens over the padded vocabulary Vp, two moments: log_softmax (the fp32
    logits and their log-softmax, 8 B per logit) and the head-weight product (Vp x C) beside
    the chunk's probabilities and their cast. loss.py unbinds a chunk's tensors before the
    next chunk starts, so nothing of one chunk outlives it but the accumulators.
    """
    C, Vp, d = cfg.n_embd, cfg.padded_vocab_size, DTYPE_BYTES[dtype]
    cast = d if dtype != "fp32" else 0  # fp32 .to() copies nothing
    chunk = min(n_tokens, chunk_tokens_for(Vp, device_type))
    probs = (FP32 + cast) * Vp  # per token
    logits = 2 * FP32 * Vp  # per token
    # The accumulator (counted as saved) appears with the first product, which in fp32 is
    # the accumulator itself; later products are added into it and freed.
    moments = [max(logits * chunk - FP32 * Vp * C, probs * chunk + cast * Vp * C)]
    if n_tokens > chunk:
        later = chunk if n_tokens > 2 * chunk else n_tokens - chunk  # the largest later chunk
        moments.append(max(logits * later, probs * later + d * Vp * C))
    # Alive throughout: ln_f's fp32 output (the input), the cast head weight and a chunk's
    # cast hidden states.
    held = FP32 * C * n_tokens + cast * Vp * C + cast * C * chunk
    return held + max(moments)


def backward_transient(
    cfg: GPTConfig, n_tokens: int, dtype: str, seq_len: int, math_attention: bool
) -> int:
    """Growth over the end of forward while backward runs through the last block.

    The head's backward scales its saved gradients in place and ln_f's frees its saved
    input; then mlp.c_proj's backward adds the gradient of the GELU output (N x 4C), the
    residual gradient cast to the compute dtype and the weight gradient. With the math
    attention kernel, its softmax backward comes later but adds more: the incoming
    gradient and the result, nh x T fp32 per token each, once the block's MLP, c_proj
    input and v are freed (calibrated against the profiler's allocation trace).
    """
    C, d = cfg.n_embd, DTYPE_BYTES[dtype]
    cast = d if dtype != "fp32" else 0
    ln = FP32 * C + 2 * FP32  # a LayerNorm's saved input, mean and rstd
    mlp = (d * 4 * C + cast * C - ln) * n_tokens + (cast + FP32) * 4 * C * C
    if not math_attention:
        return mlp
    weight_grads = FP32 * block_linear_params(cfg)
    freed = 2 * ln + d * 10 * C + FP32 * C
    softmax = (2 * FP32 * cfg.n_head * seq_len - freed) * n_tokens + weight_grads
    return max(mlp, softmax)


def optimizer_transient(cfg: GPTConfig, device_type: str, fused: bool) -> int:
    """Temporaries at the end of backward and in AdamW's update (clipping scales in place)."""
    # Backward's last step adds the embedding lookup's (Vp, C) gradient to the head's.
    embedding_grad = FP32 * cfg.padded_vocab_size * cfg.n_embd
    if fused:
        return embedding_grad  # the fused kernel updates in place
    if device_type == "cuda":
        return FP32 * allocated_params(cfg)  # foreach: sqrt(exp_avg_sq) of all tensors at once
    # On CPU tensor by tensor: sqrt(exp_avg_sq) and its division by the bias correction,
    # for the largest tensor.
    largest = max(cfg.padded_vocab_size, cfg.block_size, 4 * cfg.n_embd) * cfg.n_embd
    return max(embedding_grad, 2 * FP32 * largest)


def weight_copy_bytes(cfg: GPTConfig, dtype: str, fsdp: bool) -> int:
    """Weights held in the compute dtype besides the fp32 parameters, in forward and backward."""
    d = DTYPE_BYTES[dtype]
    if fsdp:
        # FSDP gathers in the compute dtype: the root unit (embeddings, ln_f) for the whole
        # step, and about two blocks at a time (the running one and the prefetched one).
        return d * (allocated_params(cfg) - max(0, cfg.n_layer - 2) * block_params(cfg))
    if dtype == "fp32":
        return 0
    # autocast's cached casts of the blocks' Linear weights (backward keeps them) and biases.
    return d * cfg.n_layer * block_linear_params(cfg)


def busy_moments(
    model: GPTConfig,
    micro_batch: int,
    seq_len: int,
    dtype: str,
    device_type: str = "cpu",
    world_size: int = 1,
    parallel: str = "ddp",
    accum_steps: int = 1,
    fused_adam: bool | None = None,
) -> list[MemoryEstimate]:
    """What one rank holds at each busy moment of a training step (AdamW's state exists)."""
    P, N, d, C = allocated_params(model), micro_batch * seq_len, DTYPE_BYTES[dtype], model.n_embd
    fsdp = parallel == "fsdp" and world_size > 1
    shard = world_size if fsdp else 1
    params, optimizer, grads = FP32 * P // shard, 2 * FP32 * P // shard, FP32 * P // shard
    # Gradients exist in forward from an accumulation's second micro-step on; FSDP keeps
    # them unsharded until the last micro-step (parallelize.grad_sync).
    early = 0 if accum_steps == 1 else (FP32 * P if fsdp else grads)
    grads = max(grads, early)
    if parallel == "ddp" and world_size > 1:
        # The gradients are views of DDP's buckets (gradient_as_bucket_view), which exist
        # from construction on. With accumulation, the first step's no_sync micro-steps still
        # make gradients of their own beside them, until its last micro-step moves them in.
        extra = FP32 * P if accum_steps > 1 else 0
        grads = early = FP32 * P + extra
    held = (params, early, optimizer, weight_copy_bytes(model, dtype, fsdp))
    math = uses_math_attention(device_type, dtype, seq_len)
    acts = activation_bytes(model, micro_batch, seq_len, dtype, math)
    head = loss_head_saved_bytes(model, N)
    fused = fused_adam if fused_adam is not None else fused_by_default(device_type)
    moments = [
        MemoryEstimate(
            *held, acts, head, loss_head_transient(model, N, dtype, device_type),
            "loss head forward",
        ),
        MemoryEstimate(
            *held, acts, head, backward_transient(model, N, dtype, seq_len, math),
            "backward of the last block",
        ),
        MemoryEstimate(
            params, grads, optimizer, 0, 0, 0, optimizer_transient(model, device_type, fused),
            "end of backward / optimizer step",
        ),
    ]  # fmt: skip
    if math:
        # The last block's attention forward: fp32 scores beside the softmax (nh x T per
        # token), softmax's -inf check (1 byte) and c_attn's output, the kernel's input;
        # the rest of the block, ln_f and the loss head have saved nothing yet.
        ln = FP32 * C + 2 * FP32
        later = (d * 10 * C + 2 * ln) * N
        scores = ((FP32 + 1) * model.n_head * seq_len + d * 3 * C) * N
        moments.append(MemoryEstimate(*held, acts - later, 0, scores, "attention forward"))
    return moments


def estimate_peak(
    model: GPTConfig,
    micro_batch: int,
    seq_len: int,
    dtype: str,
    device_type: str = "cpu",
    world_size: int = 1,
    parallel: str = "ddp",
    accum_steps: int = 1,
    fused_adam: bool | None = None,
) -> MemoryEstimate:
    """Peak memory of one training step on one rank: the busiest of `busy_moments`."""
    moments = busy_moments(
        model,
        micro_batch,
        seq_len,
        dtype,
        device_type,
        world_size,
        parallel,
        accum_steps,
        fused_adam,
    )
    return max(moments, key=lambda m: m.total)


def estimate_for_config(
    cfg: TrainConfig, dtype: str, device_type: str, world_size: int = 1
) -> MemoryEstimate:
    """`estimate_peak` for a training config, its micro-batch and accumulation included."""
    return estimate_peak(
        cfg.model,
        cfg.batch.micro_batch,
        cfg.batch.seq_len,
        dtype,
        device_type,
        world_size,
        cfg.run.parallel,
        cfg.grad_accum_steps(world_size),
        cfg.optim.fused,
    )


def device_memory_bytes(device: torch.device) -> tuple[int, str]:
    """Memory one device offers, and where the figure comes from."""
    if device.type == "cuda":
        _, total = torch.cuda.mem_get_info(device)
        return total, f"{torch.cuda.get_device_name(device)}, total"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "CPU, MemAvailable"  # reported in KiB
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "CPU, available pages"


def needed_bytes(estimate: MemoryEstimate, device_type: str) -> int:
    """What a run needs of its device: the tensors, malloc's slack on CPU, the runtime."""
    slack = CPU_MALLOC_SLACK if device_type == "cpu" else 1.0
    kept = estimate.params + estimate.optimizer  # allocated once, never freed
    return kept + int((estimate.total - kept) * slack) + RUNTIME_BYTES.get(device_type, 0)


@dataclass(frozen=True)
class Suggestion:
    micro_batch: int | None
    """The largest valid micro-batch whose estimate fits, or None."""
    estimate: MemoryEstimate
    """Estimate for `micro_batch`, or for the smallest candidate when none fits."""
    budget: int
    """Bytes allowed: a fraction of the device's memory, for `needed_bytes`."""
    message: str


def valid_micro_batches(tokens_per_step: int, seq_len: int, world_size: int) -> list[int]:
    """Micro-batches that split the step's tokens evenly (TrainConfig.grad_accum_steps)."""
    per_sequence = seq_len * world_size
    if tokens_per_step % per_sequence != 0:
        return []
    sequences = tokens_per_step // per_sequence
    return [b for b in range(1, sequences + 1) if sequences % b == 0]


def suggest_micro_batch(
    cfg: TrainConfig,
    dtype: str,
    device_type: str,
    device_bytes: int,
    world_size: int = 1,
    fraction: float = DEVICE_FRACTION,
) -> Suggestion:
    """The largest micro-batch that keeps the token budget valid and fits `fraction` of memory.

    Every divisor of the step's sequences per rank is tried: with a single micro-step no
    gradients exist during forward, so the estimate is not monotone in the micro-batch.
    """
    b = cfg.batch
    candidates = valid_micro_batches(b.tokens_per_step, b.seq_len, world_size)
    if not candidates:
        raise ValueError(
            f"tokens_per_step={b.tokens_per_step} is not a multiple of seq_len*world_size = "
            f"{b.seq_len}*{world_size}: no micro-batch divides it. Change --batch.tokens-per-step."
        )
    budget = int(fraction * device_bytes)
    estimates = {
        mb: estimate_peak(
            cfg.model,
            mb,
            b.seq_len,
            dtype,
            device_type,
            world_size,
            cfg.run.parallel,
            b.tokens_per_step // (mb * b.seq_len * world_size),
            cfg.optim.fused,
        )
        for mb in candidates
    }
    fitting = [mb for mb, est in estimates.items() if needed_bytes(est, device_type) <= budget]
    if not fitting:
        need = needed_bytes(estimates[candidates[0]], device_type)
        return Suggestion(
            None,
            estimates[candidates[0]],
            budget,
            f"none: even micro-batch {candidates[0]} needs ~{fmt_bytes(need)}, more than "
            f"{fraction:.0%} of {fmt_bytes(device_bytes)}. Use a smaller model, a shorter "
            f"--batch.seq-len, or --run.parallel fsdp over more devices.",
        )
    mb = max(fitting)
    need = needed_bytes(estimates[mb], device_type)
    return Suggestion(
        mb,
        estimates[mb],
        budget,
        f"{mb} (--batch.micro-batch {mb}), needing ~{fmt_bytes(need)} of {fraction:.0%} x "
        f"{fmt_bytes(device_bytes)}",
    )
