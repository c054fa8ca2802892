"""GPT-2, exactly, and the modern options that beat it: the architecture and its
initialisation, in plain torch.nn.

Parameter names follow Hugging Face's GPT2LMHeadModel (`transformer.wte`,
`transformer.h.{i}.attn.c_attn`, ...), so loading OpenAI's weights is a key copy plus
transposes of the Conv1D matrices (see pretrained.py). This module imports only torch
and the standard library: compilation, DDP and FSDP wrap it from outside.

Every option of `GPTConfig` past `pad_vocab_to` is off by default, so the default model is
GPT-2. Turned on together (`presets.modern_model_options`), they give the architecture of
modded-nanogpt and nanochat that transformers ships as `NanoChatForCausalLM`: rotary
positions, weight-free RMSNorm (also on the embeddings), QK-norm after the rotation, ReLU²,
an untied head and logit soft-capping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from gpt2repro.loss import LinearCrossEntropy

_POSITIONS = ("learned", "rope")
_NORMS = ("layernorm", "rmsnorm")
_ACTIVATIONS = ("gelu", "relu2")
RMS_NORM_EPS = 1e-6  # nanochat's and transformers' NanoChatConfig default


@dataclass
class GPTConfig:
    """Shape of a GPT-2 model."""

    vocab_size: int = 50257
    """Number of real tokens (GPT-2's BPE has 50,257)."""
    block_size: int = 1024
    """Maximum context length (learned positional embeddings)."""
    n_layer: int = 12
    """Number of transformer blocks."""
    n_head: int = 12
    """Attention heads per block."""
    n_embd: int = 768
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout on embeddings, attention and residual branches (0 for pretraining, as GPT-2 small)."""
    bias: bool = True
    """Biases in Linear and LayerNorm layers (True matches OpenAI's GPT-2)."""
    pad_vocab_to: int = 64
    """Round the embedding rows up to a multiple of this for faster matmuls (50257 -> 50304); 1 = no padding."""
    position: Literal["learned", "rope"] = "learned"
    """Positions: GPT-2's learned table (`wpe`) or rotary embeddings of queries and keys (RoPE)."""
    rope_base: float = 10000.0
    """RoPE's base: pair i of a head rotates by position * base^(-2i/head_size) (Su et al. 2021)."""
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    """GPT-2's LayerNorm, or RMSNorm without learnable weights, then also on the embeddings."""
    qk_norm: bool = False
    """RMSNorm each head's queries and keys (after RoPE), which bounds the attention logits."""
    activation: Literal["gelu", "relu2"] = "gelu"
    """MLP activation: GPT-2's tanh GELU, or ReLU squared (So et al. 2021, Primer)."""
    tie_embeddings: bool = True
    """Share the input embedding with the output head (GPT-2), or give the head its own weight."""
    zero_init_proj: bool = False
    """Start the residual projections (attention and MLP c_proj) and an untied head at zero."""
    logit_softcap: float = 0.0
    """Cap the logits smoothly at +-c as c * tanh(z / c) (nanochat: 15); 0 = off."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "pad_vocab_to"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be >= 1")
        if self.n_head >= 1 and self.n_embd % self.n_head != 0:
            problems.append(f"n_embd={self.n_embd} must be divisible by n_head={self.n_head}")
        elif self.position == "rope" and (self.n_embd // max(1, self.n_head)) % 2:
            problems.append(
                f"position=rope needs an even head size, not {self.n_embd // self.n_head}"
            )
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        if not (math.isfinite(self.rope_base) and self.rope_base > 1.0):
            problems.append(f"rope_base={self.rope_base} must be a finite number above 1")
        if not (math.isfinite(self.logit_softcap) and self.logit_softcap >= 0.0):
            problems.append(f"logit_softcap={self.logit_softcap} must be 0 (off) or a positive cap")
        for name, allowed in (
            ("position", _POSITIONS),
            ("norm", _NORMS),
            ("activation", _ACTIVATIONS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(
                    f"{name}={getattr(self, name)!r} must be one of {', '.join(allowed)}"
                )
        if problems:
            raise ValueError("Invalid model config: " + "; ".join(problems) + ".")

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding; rows past `vocab_size` never receive probability."""
        m = self.pad_vocab_to
        return (self.vocab_size + m - 1) // m * m


class KVCache:
    """Keys and values of every layer for incremental decoding, preallocated to `max_len`."""

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        hs = config.n_embd // config.n_head
        shape = (config.n_layer, batch_size, config.n_head, max_len, hs)  # (L, B, nh, T_max, hs)
        self.k = torch.zeros(shape, device=device, dtype=dtype)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0
        """Number of positions already filled (the same for every layer once a forward ends)."""

    @property
    def max_len(self) -> int:
        return self.k.size(3)


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm over the last dimension without a learnable weight, computed in fp32 as
    transformers' NanoChatRMSNorm does (its parity test compares against it)."""
    return F.rms_norm(x.float(), (x.size(-1),), eps=RMS_NORM_EPS).type_as(x)


class RMSNorm(nn.Module):
    """`rms_norm` as a module, so it sits where GPT-2's LayerNorms sit (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x)


def make_norm(config: GPTConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return RMSNorm()
    return nn.LayerNorm(config.n_embd, eps=1e-5, bias=config.bias)


def rope_angles(
    config: GPTConfig, start: int, T: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin (T, hs/2) of positions start..start+T-1 for every rotated pair."""
    hs = config.n_embd // config.n_head
    inv_freq = config.rope_base ** (
        -torch.arange(0, hs, 2, dtype=torch.float32, device=device) / hs
    )  # (hs/2,)
    pos = torch.arange(start, start + T, dtype=torch.float32, device=device)  # (T,)
    angles = pos[:, None] * inv_freq[None, :]  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, nh, T, hs) by the angles; pair i is (x[i], x[i + hs/2]), and the rotation's
    sign is nanochat's (transformers' NanoChat `rotate_half`), so exports match it exactly."""
    x1, x2 = x.chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)  # (B, nh, T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.qk_norm = config.qk_norm
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, nh, hs).transpose(1, 2)  # (B, nh, T, hs)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if self.qk_norm:
            q, k = rms_norm(q), rms_norm(k)
        is_causal, mask = True, None
        if cache is not None:
            # Keys are cached rotated and normalised: a cached step equals a recomputation.
            start = cache.pos
            cache.k[layer, :, :, start : start + T] = k
            cache.v[layer, :, :, start : start + T] = v
            k = cache.k[layer, :, :, : start + T]  # (B, nh, start+T, hs)
            v = cache.v[layer, :, :, : start + T]
            if start > 0:
                # Query i sits at absolute position start+i and may see keys 0..start+i.
                is_causal = False
                if T > 1:
                    q_pos = torch.arange(start, start + T, device=x.device)[:, None]
                    mask = (
                        torch.arange(start + T, device=x.device)[None, :] <= q_pos
                    )  # (T, start+T)
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)
        self.act = relu_squared if config.activation == "relu2" else gelu_tanh

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    """ReLU(x)^2 (transformers' "relu2")."""
    return _ReLUSquared.apply(x)


class _ReLUSquared(torch.autograd.Function):
    """ReLU(x)^2 with the gradient 2 ReLU(x) taken from the one saved tensor: autograd's
    chain through `relu` then `square` spends two more passes over the MLP's widest
    activation (a pow and a mask) for the same values."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        r = F.relu(x)
        ctx.save_for_backward(r)
        return r * r

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (r,) = ctx.saved_tensors
        return grad * r * 2  # zero where x <= 0 without a mask; x 2 is exact


SQRT_8_OVER_PI = math.sqrt(8 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU ("gelu_new" in transformers).

    0.5 x (1 + tanh(u)) equals x sigmoid(2u), up to rounding (< 5e-7 absolute in fp32).
    Compiled, the sigmoid form is used: inductor's CPU tanh is slower than its exp
    (benchmarks/results/2026-11-22_notes-gelu-sigmoid_cpu-2core-intel-amx.md). Eager keeps
    PyTorch's fused kernel.
    """
    if torch.compiler.is_compiling():
        return x * torch.sigmoid(SQRT_8_OVER_PI * (x + 0.044715 * x * x * x))
    return F.gelu(x, approximate="tanh")


class Block(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        layer: int = 0,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer, rope)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """The trunk, under the name `transformer` as in Hugging Face's GPT2LMHeadModel."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(config.padded_vocab_size, config.n_embd)
        if config.position == "learned":
            self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = make_norm(config)


class GPT(nn.Module):
    """GPT-2 language model (tied input/output embeddings unless the config unties them)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        self.transformer = Transformer(config)
        self.lm_head = nn.Linear(config.n_embd, config.padded_vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying, as in GPT-2
        self.head_loss = LinearCrossEntropy(config.vocab_size, config.logit_softcap)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """GPT-2 init: N(0, 0.02), residual projections N(0, 0.02/sqrt(2*n_layer)), biases 0.

        Separate from __init__ so a model built on the meta device can be materialised
        with `to_empty()` and then initialised.
        """
        std = 0.02
        residual_std = std / math.sqrt(2 * self.config.n_layer)  # two residual adds per block
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                s = residual_std if name.endswith("c_proj") else std
                nn.init.normal_(module.weight, mean=0.0, std=s)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.config.zero_init_proj:
            # modded-nanogpt: every block starts as the identity, and an untied head as
            # uniform predictions; the first updates open them (their inputs are not zero).
            for name, p in self.named_parameters():
                if name.endswith("c_proj.weight") or (
                    name == "lm_head.weight" and not self.config.tie_embeddings
                ):
                    p.zero_()
        # Padded rows are never a target and never sampled; zero keeps them inert.
        self.transformer.wte.weight[self.config.vocab_size :].zero_()
        self.lm_head.weight[self.config.vocab_size :].zero_()

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Unique parameters (a tied head counted once), excluding padded vocabulary rows."""
        n = sum(p.numel() for p in self.parameters())
        vocab_tables = 1 if self.config.tie_embeddings else 2
        n -= (
            vocab_tables
            * (self.config.padded_vocab_size - self.config.vocab_size)
            * self.config.n_embd
        )
        if exclude_embeddings and self.config.position == "learned":
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for `idx` (B, T); or, given `targets`, the mean cross-entropy.

        Targets equal to -1 are ignored. With a `cache`, `idx` continues the cached
        sequence, and the cache advances by T.
        """
        B, T = idx.shape
        start = 0 if cache is None else cache.pos
        if start + T > self.config.block_size:
            raise ValueError(
                f"Sequence of {start + T} tokens exceeds the model's context of {self.config.block_size}."
            )
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.config.position == "learned":
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
            x = x + self.transformer.wpe(pos)
        else:
            rope = rope_angles(self.config, start, T, idx.device)
        if self.config.norm == "rmsnorm":
            x = rms_norm(x)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, cache, i, rope)
        if cache is not None:
            cache.pos += T
        x = self.transformer.ln_f(x)
        if targets is None:
            # Only the real rows: padded ones never receive probability mass. Slicing the
            # weight, not the logits, returns a tensor of its own (FSDP warns of a view
            # output, as an in-place op on it would skip its backward hook) and skips the
            # padded rows' work.
            logits = F.linear(x, self.lm_head.weight[: self.config.vocab_size])  # (B, T, vocab)
            return softcap(logits, self.config.logit_softcap)
        # Chunked: the (B*T, vocab) fp32 logits of a micro-batch are never materialised.
        return self.head_loss(x.reshape(B * T, -1), self.lm_head.weight, targets.reshape(B * T))


def softcap(logits: torch.Tensor, cap: float) -> torch.Tensor:
    """c * tanh(z / c): logits bounded smoothly at +-cap; 0 = unchanged."""
    if cap <= 0:
        return logits
    return cap * torch.tanh(logits / cap)
