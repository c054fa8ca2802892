"""The modern architecture in transformers' own format: `NanoChatForCausalLM` (model_type
`nanochat`), so a model trained with the modern options loads with `AutoModelForCausalLM`
and no custom code.

NanoChat computes what `GPTConfig`'s modern options compute: rotary positions (nanochat's
rotation sign), weight-free RMSNorm on the embeddings, before each sub-layer and at the end,
RMSNorm of queries and keys after the rotation, ReLU², no biases, an optional tied head and
an optional final-logit soft cap. The conversion splits our fused `c_attn` into q/k/v and
renames; nothing is transposed (both sides are nn.Linear). GPT-2's options are written by
pretrained.py as GPT2LMHeadModel; `stock_class` says which of the two holds a config, and
what stands in the way when neither does.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt2repro.model import GPT, RMS_NORM_EPS, GPTConfig

GPT2_CLASS = "GPT2LMHeadModel"
NANOCHAT_CLASS = "NanoChatForCausalLM"

# What each stock class computes: (field, the value it needs) for the options that differ.
_NEEDS: dict[str, list[tuple[str, Any]]] = {
    GPT2_CLASS: [
        ("position", "learned"),
        ("norm", "layernorm"),
        ("qk_norm", False),
        ("activation", "gelu"),
        ("tie_embeddings", True),
        ("logit_softcap", 0.0),
    ],
    NANOCHAT_CLASS: [
        ("position", "rope"),
        ("norm", "rmsnorm"),
        ("qk_norm", True),
        ("activation", "relu2"),
        ("bias", False),
    ],
}


def stock_class(config: GPTConfig) -> str:
    """The transformers class that computes exactly what `config` does, or ValueError naming
    the options that keep each class from holding it."""
    misses = {
        cls: [
            f"{field}={getattr(config, field)!r} (needs {want!r})"
            for field, want in needs
            if getattr(config, field) != want
        ]
        for cls, needs in _NEEDS.items()
    }
    for cls, missed in misses.items():
        if not missed:
            return cls
    raise ValueError(
        "No stock transformers class computes this model, so it cannot be exported: "
        + "; ".join(f"{cls} differs in {', '.join(m)}" for cls, m in misses.items())
        + ". Train with every modern option (the modern presets) or none of them."
    )


def nanochat_config(config: GPTConfig, dtype: torch.dtype, eot: int | None) -> dict[str, Any]:
    """transformers' NanoChatConfig as JSON for `config` (vocabulary without padding)."""
    return {
        "architectures": [NANOCHAT_CLASS],
        "model_type": "nanochat",
        "vocab_size": config.vocab_size,
        "hidden_size": config.n_embd,
        "intermediate_size": 4 * config.n_embd,
        "num_hidden_layers": config.n_layer,
        "num_attention_heads": config.n_head,
        "num_key_value_heads": config.n_head,
        "max_position_embeddings": config.block_size,
        "hidden_act": "relu2",
        "attention_dropout": config.dropout,
        "rms_norm_eps": RMS_NORM_EPS,
        "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_base},
        "final_logit_softcapping": config.logit_softcap or None,
        "attention_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def to_nanochat(model: GPT) -> dict[str, torch.Tensor]:
    """`model`'s weights under NanoChatForCausalLM's names (CPU, contiguous, no padded rows)."""
    config, C = model.config, model.config.n_embd
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["transformer.wte.weight"][: config.vocab_size]}
    if not config.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"][: config.vocab_size]
    for i in range(config.n_layer):
        ours, theirs = f"transformer.h.{i}.", f"model.layers.{i}."
        q, k, v = sd[ours + "attn.c_attn.weight"].split(C, dim=0)  # (C, C) each
        out |= {
            theirs + "self_attn.q_proj.weight": q,
            theirs + "self_attn.k_proj.weight": k,
            theirs + "self_attn.v_proj.weight": v,
            theirs + "self_attn.o_proj.weight": sd[ours + "attn.c_proj.weight"],
            theirs + "mlp.fc1.weight": sd[ours + "mlp.c_fc.weight"],
            theirs + "mlp.fc2.weight": sd[ours + "mlp.c_proj.weight"],
        }
    return {k: t.contiguous() for k, t in out.items()}


def gpt_config_from_nanochat(hf: dict[str, Any], pad_vocab_to: int) -> GPTConfig:
    """Our config for a NanoChatConfig; ValueError naming what our model cannot compute."""
    n_embd, n_head = hf.get("hidden_size", 768), hf.get("num_attention_heads", 6)
    rope = hf.get("rope_parameters") or {}
    problems = [
        f"{key} is {hf.get(key, default)!r}, not {want!r}"
        for key, default, want in [
            ("hidden_act", "relu2", "relu2"),
            ("intermediate_size", 8192, 4 * n_embd),
            ("num_key_value_heads", n_head, n_head),
            ("attention_bias", False, False),
            ("rms_norm_eps", 1e-6, RMS_NORM_EPS),
        ]
        if hf.get(key, default) != want
    ]
    if rope.get("rope_type", "default") != "default":
        problems.append(f"rope_type is {rope.get('rope_type')!r}, not 'default'")
    if problems:
        raise ValueError(
            "not a NanoChat model that gpt2repro can represent: " + "; ".join(problems) + "."
        )
    return GPTConfig(
        vocab_size=hf.get("vocab_size", 50304),
        block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf.get("num_hidden_layers", 12),
        n_head=n_head,
        n_embd=n_embd,
        dropout=float(hf.get("attention_dropout", 0.0)),
        bias=False,
        pad_vocab_to=pad_vocab_to,
        position="rope",
        rope_base=float(rope.get("rope_theta", 10000.0)),
        norm="rmsnorm",
        qk_norm=True,
        activation="relu2",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        logit_softcap=float(hf.get("final_logit_softcapping") or 0.0),
    )


def from_nanochat(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """NanoChat tensors as the state dict of `GPT(config)` (padded rows zero); KeyError or
    ValueError name a missing or misshapen tensor."""

    def padded(t: torch.Tensor) -> torch.Tensor:
        out = t.new_zeros(config.padded_vocab_size, t.size(1))  # (padded_vocab, C)
        out[: t.size(0)] = t
        return out

    wte = padded(state["model.embed_tokens.weight"])
    ours = {"transformer.wte.weight": wte}
    head = wte if config.tie_embeddings else padded(state["lm_head.weight"])
    ours["lm_head.weight"] = head
    for i in range(config.n_layer):
        theirs, mine = f"model.layers.{i}.", f"transformer.h.{i}."
        qkv = [state[theirs + f"self_attn.{p}_proj.weight"] for p in "qkv"]
        ours |= {
            mine + "attn.c_attn.weight": torch.cat(qkv, dim=0),  # (3C, C)
            mine + "attn.c_proj.weight": state[theirs + "self_attn.o_proj.weight"],
            mine + "mlp.c_fc.weight": state[theirs + "mlp.fc1.weight"],
            mine + "mlp.c_proj.weight": state[theirs + "mlp.fc2.weight"],
        }
    return ours
