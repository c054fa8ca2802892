"""Checkpoint directories: written atomically, versioned, loaded without unpickling.

Layout of one checkpoint (a directory):
    meta.json           format version, model config, tokenizer, step and other plain data
    model.safetensors   weights (the tied head is stored once, as transformer.wte.weight)
    tokenizer.json      only for trained byte-level BPE tokenizers, so a checkpoint is self-contained
    train_state.pt      optimizer, grad scaler and RNG states (training checkpoints), loaded
                        with torch.load(weights_only=True): tensors and plain containers only

The directory is assembled under a temporary name and renamed into place, so a
killed process never leaves a directory that looks like a valid checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import Tokenizer, load_tokenizer

FORMAT_VERSION = 1
META = "meta.json"
WEIGHTS = "model.safetensors"
TIED_KEY = "lm_head.weight"  # shares storage with transformer.wte.weight
TRAIN_STATE = "train_state.pt"


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside torch.compile / DDP wrappers."""
    while not isinstance(model, GPT):
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        assert inner is not None, f"cannot find a GPT inside {type(model).__name__}"
        model = inner
    return model


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights keyed by Hugging Face-style names, without the tied duplicate."""
    sd = unwrap(model).state_dict()
    return {k: v.detach().contiguous() for k, v in sd.items() if k != TIED_KEY}


def is_checkpoint(path: Path) -> bool:
    return (path / META).is_file() and (path / WEIGHTS).is_file()


def save_checkpoint(
    path: Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    meta: dict[str, Any] | None = None,
    extra_files: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint directory at `path` atomically; returns `path`.

    `extra_files` maps file names to callables `fn(path)` that write further files
    (optimizer state, loader state) into the directory before it is published.
    """
    gpt = unwrap(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_file(model_state(gpt), str(tmp / WEIGHTS))
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
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    meta: dict[str, Any] = json.loads((path / META).read_text())
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: checkpoint format version {version}, this gpt2repro reads {FORMAT_VERSION}. "
            f"Use the gpt2repro version that wrote it, or re-export it."
        )
    return meta


def checkpoint_tokenizer(path: Path, meta: dict[str, Any]) -> Tokenizer:
    spec = meta["tokenizer"]
    return load_tokenizer(spec if spec == "gpt2" else str(path / spec))


def load_model(
    path: Path, device: str | torch.device = "cpu"
) -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The model, tokenizer and meta data stored in checkpoint directory `path`."""
    meta = read_meta(path)
    config = GPTConfig(**meta["model_config"])
    with torch.device("meta"):
        model = GPT(config)
    model.to_empty(device=device)
    state = load_file(str(path / WEIGHTS), device=str(device))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {TIED_KEY}:
        raise ValueError(
            f"{path / WEIGHTS}: weights do not fit the stored config "
            f"(missing {sorted(set(missing) - {TIED_KEY})}, unexpected {sorted(unexpected)})."
        )
    model.lm_head.weight = model.transformer.wte.weight  # to_empty() broke the tie
    return model, checkpoint_tokenizer(path, meta), meta


# ---- training state: optimizer, scaler, loader position and every RNG ----


def rng_state() -> dict[str, Any]:
    """Every random generator that training touches, as plain containers and tensors."""
    np_state: tuple[Any, ...] = np.random.get_state(legacy=True)  # type: ignore[assignment]
    state: dict[str, Any] = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_checkpoint(
    path: Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    meta: dict[str, Any],
) -> Path:
    """A checkpoint that resumes exactly: weights plus optimizer, scaler and RNG states.

    `meta` must be JSON-serialisable (train state, loader state, config).
    """

    def write_state(p: Path) -> None:
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rng_state(),
            },
            p,
        )

    return save_checkpoint(
        path, model, tokenizer, meta=meta, extra_files={TRAIN_STATE: write_state}
    )


def load_train_state(path: Path) -> dict[str, Any]:
    """Optimizer, scaler and RNG states of a training checkpoint; never unpickles code."""
    file = path / TRAIN_STATE
    if not file.is_file():
        raise ValueError(f"{path}: has weights but no {TRAIN_STATE}; it cannot resume training.")
    state: dict[str, Any] = torch.load(file, map_location="cpu", weights_only=True)
    return state


def step_dirs(ckpt_root: Path) -> list[Path]:
    """Valid step_NNNNNN checkpoints under `ckpt_root`, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [
        p
        for p in ckpt_root.glob("step_*")
        if p.is_dir() and is_checkpoint(p) and (p / TRAIN_STATE).is_file()
    ]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step checkpoints (the `best` one lives apart)."""
    for old in step_dirs(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
