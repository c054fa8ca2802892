"""Checkpoint directories: written atomically, versioned, loaded without unpickling.

Layout of one checkpoint (a directory):
    meta.json           format version, model config, tokenizer, step and other plain data
    model.safetensors   weights (a tied head is stored once, as transformer.wte.weight)
    tokenizer.json      only for trained byte-level BPE tokenizers, so a checkpoint is self-contained
    train_state.pt      optimizer, grad scaler and RNG states (training checkpoints), loaded
                        with torch.load(weights_only=True): tensors and plain containers only

The directory is assembled under a temporary name and renamed into place, so a
killed process never leaves a directory that looks like a valid checkpoint; what it does
leave (the temporary, a checkpoint half-replaced or half-deleted) a resumed run cleans up
(`atomic.recover_directories`).

Several ranks: rank 0 writes everything, after gathering what only the others hold (FSDP
shards of weights and optimizer state, through torch.distributed.checkpoint; every rank's
RNG state), so a checkpoint is the same single-process directory whatever wrote it. The
optimizer state is keyed by each parameter's position in the optimizer's groups, as
`optimizer.state_dict()` keys it. Resuming, every rank reads meta.json and train_state.pt
(the directory must be on a filesystem all nodes see); under FSDP rank 0 alone reads the
tensors and sends each rank its shard.

Older layouts are patched on load (`upgrade_meta`, `upgrade_state`), each change named.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gpt2repro.atomic import atomic_directory
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import is_sharded
from gpt2repro.pretrained import corrupt_message
from gpt2repro.tokenizer import Tokenizer, load_tokenizer

FORMAT_VERSION = 1
META = "meta.json"
WEIGHTS = "model.safetensors"
TIED_KEY = "lm_head.weight"  # shares storage with transformer.wte.weight when tied
TRAIN_STATE = "train_state.pt"


class DamagedCheckpoint(ValueError):
    """A checkpoint file that cannot be read (truncated, corrupt) or is refused (it holds code):
    another checkpoint may do."""


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside torch.compile / DDP wrappers."""
    while not isinstance(model, GPT):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        assert inner is not None, f"cannot find a GPT inside {type(model).__name__}"
        model = inner
    return model


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights keyed by Hugging Face-style names, without a tied head's duplicate."""
    gpt = unwrap(model)
    skip = TIED_KEY if gpt.config.tie_embeddings else None
    return {k: v.detach().contiguous() for k, v in gpt.state_dict().items() if k != skip}


def gather_model_state(model: torch.nn.Module, keep: bool) -> dict[str, torch.Tensor]:
    """`model_state` on the CPU where `keep` (rank 0), else {}.

    Under FSDP a collective (every rank calls it, rank 0 keeps): one tensor at a time is
    gathered whole (a tied head's twice: DCP reads `state_dict()`, which names it twice).
    """
    gpt = unwrap(model)
    if not is_sharded(gpt):
        return {k: v.cpu() for k, v in model_state(gpt).items()} if keep else {}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    whole: dict[str, Any] = get_model_state_dict(gpt, options=whole_tensors())  # {} off rank 0
    if gpt.config.tie_embeddings:
        whole.pop(TIED_KEY, None)
    return whole


def whole_tensors(from_rank0: bool = False) -> Any:
    """torch.distributed.checkpoint's options for whole tensors: gathered into rank 0's
    memory, or sent from rank 0 to every rank, which keeps its shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    if from_rank0:
        return StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def is_checkpoint(path: Path) -> bool:
    return (path / META).is_file() and (path / WEIGHTS).is_file()


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    meta: dict[str, Any] | None = None,
    extra_files: dict[str, Any] | None = None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory at `path` atomically; returns `path`.

    `extra_files` maps file names to callables `fn(path)` that write further files
    (optimizer state, loader state) into the directory before it is published.
    `weights` replaces `model_state(model)` (for weights gathered from FSDP shards).
    """
    gpt = unwrap(model)
    with atomic_directory(path) as tmp:
        save_file(model_state(gpt) if weights is None else weights, str(tmp / WEIGHTS))
        tok_spec = tokenizer.spec
        if tok_spec != "gpt2":
            shutil.copyfile(tok_spec, tmp / "tokenizer.json")
            tok_spec = "tokenizer.json"
        for name, write in (extra_files or {}).items():
            write(tmp / name)
        full_meta = {
            "format_version": FORMAT_VERSION,
            "model_config": asdict(gpt.config),
            "tokenizer": tok_spec,
            "tokenizer_identifier": tokenizer.identifier,
            **(meta or {}),
        }
        # meta.json last: its presence is what marks the directory complete.
        (tmp / META).write_text(json.dumps(full_meta, indent=2))
    return path


def read_meta(path: Path) -> dict[str, Any]:
    """The checkpoint's meta.json, validated; errors name the path and what to do."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint directory.")
    if not is_checkpoint(path):
        raise ValueError(
            f"{path}: not a gpt2repro checkpoint (needs {META} and {WEIGHTS}). "
            f"Pass a checkpoint directory written by `gpt2repro train`."
        )
    try:
        meta = json.loads((path / META).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path / META}: damaged, not JSON ({e}); the checkpoint cannot be used. Use "
            f"another checkpoint (an earlier step_* or best), or delete {path} so "
            f"`--checkpoint.resume auto` picks the newest intact one."
        ) from None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{path / META}: damaged, not a JSON object; the checkpoint cannot be used. "
            f"Use another checkpoint, or delete {path}."
        )
    return upgrade_meta(path, meta)


CLASSIC_GPT2_OPTIONS: dict[str, Any] = {
    "position": "learned",
    "rope_base": 10000.0,
    "norm": "layernorm",
    "qk_norm": False,
    "activation": "gelu",
    "tie_embeddings": True,
    "zero_init_proj": False,
    "logit_softcap": 0.0,
}
"""The model options added in commit ffd9590, as every model before them was built."""


def upgrade_meta(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint `path`'s meta.json `meta` in the current layout, or why it cannot be read.

    Format version 1 is the only one so far (any other is refused); a version 2 would add
    its patches here. Model configs from before ffd9590 lack the options added there: they
    are set as those models were built (classic GPT-2), not to today's defaults, which may
    change. Options added later and not patched here take GPTConfig's defaults.
    """
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {version}, this gpt2repro reads {FORMAT_VERSION}. "
            f"Use the gpt2repro version that wrote it, or re-export it."
        )
    config = {**CLASSIC_GPT2_OPTIONS, **meta["model_config"]}
    if unknown := sorted(set(config) - {f.name for f in fields(GPTConfig)}):
        raise ValueError(
            f"{path / META}: model options {unknown} are unknown to this gpt2repro: the "
            f"checkpoint was written by a newer one. Load it with that version."
        )
    return {**meta, "model_config": config}


def checkpoint_tokenizer(path: Path, meta: dict[str, Any]) -> Tokenizer:
    spec = meta["tokenizer"]
    return load_tokenizer(spec if spec == "gpt2" else str(path / spec))


def load_model(
    path: Path, device: str | torch.device = "cpu", tokenizer: str | None = None
) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The model, tokenizer and meta data stored in checkpoint directory `path`; `tokenizer`
    (a spec) replaces the stored tokenizer, which is then not read (it may be damaged)."""
    meta = read_meta(path)
    config = GPTConfig(**meta["model_config"])
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    state = _read_weights(path, device)
    _check_keys(path, set(state), model)
    model.load_state_dict(state, strict=False)
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # to_empty() broke the tie
    tok = load_tokenizer(tokenizer) if tokenizer is not None else checkpoint_tokenizer(path, meta)
    return model, tok, meta


def _read_weights(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(path / WEIGHTS, device=str(device))
    except SafetensorError as e:
        raise DamagedCheckpoint(corrupt_message(path / WEIGHTS, e, "Use another checkpoint")) from e


def weight_names(path: Path) -> set[str]:
    """The names in checkpoint `path`'s weights file, from its header (checked whole)."""
    try:
        with safe_open(str(path / WEIGHTS), framework="pt") as f:
            return set(f.keys())
    except SafetensorError as e:
        raise DamagedCheckpoint(corrupt_message(path / WEIGHTS, e, "Use another checkpoint")) from e


def _check_keys(path: Path, names: set[str], model: GPT) -> None:
    expected = set(model.state_dict()) - ({TIED_KEY} if model.config.tie_embeddings else set())
    missing, unexpected = expected - names, names - expected
    if missing or unexpected:
        raise ValueError(
            f"{path / WEIGHTS}: weights do not fit the model "
            f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})."
        )


def restore_weights(path: Path, model: torch.nn.Module) -> None:
    """Load checkpoint `path`'s weights into `model` as trained (compiled, DDP or FSDP).

    Under FSDP a collective: rank 0 reads the weights and sends each rank its shard. Every
    rank checks the names first (from the file's header), so all refuse a misfit alike.
    """
    meta = read_meta(path)
    gpt = unwrap(model)
    # Through GPTConfig, like load_model: options upgrade_meta does not set take its defaults.
    stored, mine = asdict(GPTConfig(**meta["model_config"])), asdict(gpt.config)
    changed = [
        f"{k} {stored.get(k)} -> {mine[k]}"
        for k in mine
        if k != "dropout" and stored.get(k) != mine[k]
    ]
    if changed:
        raise ValueError(
            f"{path}: the checkpoint's model differs from this run's ({', '.join(changed)}). "
            f"Resume with the model settings it was trained with."
        )
    _check_keys(path, weight_names(path), gpt)
    sharded = is_sharded(gpt)
    state: dict[str, Any] = (
        _read_weights(path) if not sharded or torch.distributed.get_rank() == 0 else {}
    )
    if state and gpt.config.tie_embeddings:
        state[TIED_KEY] = state["transformer.wte.weight"]
    if not sharded:
        gpt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(gpt, state, options=whole_tensors(from_rank0=True))
