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
shards of weights and optimizer state, every rank's RNG state), so a checkpoint is the
same single-process directory whatever wrote it. Resuming, every rank reads it (it must be
on a filesystem all nodes see) and keeps its own shard.
"""

from __future__ import annotations

import io
import json
import pickle
import random
import re
import shutil
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gpt2repro.atomic import atomic_directory, delete_directory, move_aside
from gpt2repro.distributed import DistInfo, gather_objects
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import full_tensor, is_dtensor, shard_like
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
    """`model_state` with FSDP shards gathered, on the CPU where `keep` (rank 0), else {}.

    A collective under FSDP: every rank calls it. One tensor is whole at a time.
    """
    out = {}
    for key, value in model_state(model).items():
        whole = full_tensor(value)
        if keep:
            out[key] = whole.cpu()
    return out


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
    _check_keys(path, state, model)
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


def _check_keys(path: Path, state: dict[str, torch.Tensor], model: GPT) -> None:
    expected = set(model.state_dict()) - ({TIED_KEY} if model.config.tie_embeddings else set())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"{path / WEIGHTS}: weights do not fit the model "
            f"(missing {sorted(missing)}, unexpected {sorted(unexpected)})."
        )


def restore_weights(path: Path, model: torch.nn.Module) -> None:
    """Load checkpoint `path`'s weights into `model` as trained (compiled, DDP or FSDP).

    Under FSDP every rank reads the full weights and keeps its shard (a collective).
    """
    meta = read_meta(path)
    gpt = unwrap(model)
    # Through GPTConfig: options added since the checkpoint was written take their defaults.
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
    state = _read_weights(path)
    _check_keys(path, state, gpt)
    if gpt.config.tie_embeddings:
        state[TIED_KEY] = state["transformer.wte.weight"]
    local = gpt.state_dict()
    gpt.load_state_dict({k: shard_like(state[k], v) for k, v in local.items()})


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
        # This process's GPU only (torchrun sets it per rank): a resume on a machine with
        # fewer GPUs must not need a generator for each GPU of the old one.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list | tuple):  # older checkpoints saved every visible GPU's
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


def _flat_params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Parameters in the order of the integer keys of `optimizer.state_dict()`."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def gather_optimizer_state(optimizer: torch.optim.Optimizer, keep: bool) -> dict[str, Any]:
    """`optimizer.state_dict()` with FSDP shards gathered (on the CPU) where `keep`, else {}.

    The result has the single-process layout, so any world size and mode can load it.
    A collective under FSDP: every rank walks the state in the same (sorted) order.
    """
    sd = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for pid in sorted(sd["state"]):
        entry = sd["state"][pid]
        state[pid] = {}
        for key in sorted(entry):
            value = entry[key]
            if is_dtensor(value):
                value = full_tensor(value).cpu()
            state[pid][key] = value
    return {"state": state, "param_groups": sd["param_groups"]} if keep else {}


def restore_optimizer(optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    """Load a single-process-layout optimizer state, cutting each tensor like its parameter."""
    params = _flat_params(optimizer)
    state: dict[int, dict[str, Any]] = {}
    for pid in sorted(sd["state"]):
        p = params[pid]
        state[pid] = {
            key: shard_like(v, p) if isinstance(v, torch.Tensor) and v.shape == p.shape else v
            for key, v in sorted(sd["state"][pid].items())
        }
    optimizer.load_state_dict({"state": state, "param_groups": sd["param_groups"]})


def gather_rng_states(dist: DistInfo) -> list[dict[str, Any]]:
    """Every rank's `rng_state()` on rank 0 (others get []), a collective.

    Sent as torch.save bytes and read back with weights_only=True: pickled tensors do not
    survive all_gather_object on every torch version.
    """
    buf = io.BytesIO()
    torch.save(rng_state(), buf)
    blobs = gather_objects(buf.getvalue(), dist)
    if not dist.is_main:
        return []
    return [torch.load(io.BytesIO(b), weights_only=True) for b in blobs]


def save_train_checkpoint(
    path: Path,
    model: torch.nn.Module,
    tokenizer: Tokenizer,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    meta: dict[str, Any],
    dist: DistInfo | None = None,
) -> Path:
    """A checkpoint that resumes exactly: weights plus optimizer, scaler and RNG states.

    `meta` must be JSON-serialisable (train state, loader state, config). With several
    ranks every rank calls this (the gathers are collective) and rank 0 writes.
    """
    dist = dist or DistInfo()
    weights = gather_model_state(model, keep=dist.is_main)
    optim = gather_optimizer_state(optimizer, keep=dist.is_main)
    rngs = gather_rng_states(dist)
    if not dist.is_main:
        return path

    def write_state(p: Path) -> None:
        state: dict[str, Any] = {"optimizer": optim, "scaler": scaler.state_dict(), "rng": rngs[0]}
        if dist.enabled:
            state["rng_per_rank"] = rngs  # dropout masks differ per rank, so do the generators
        torch.save(state, p)

    return save_checkpoint(
        path, model, tokenizer, meta=meta, extra_files={TRAIN_STATE: write_state}, weights=weights
    )


def load_train_state(path: Path, mmap: bool = False) -> dict[str, Any]:
    """Optimizer, scaler and RNG states of a training checkpoint; never unpickles code.

    `mmap` maps the tensors instead of reading them: a quick check that the file is whole
    and safe, before anything large is built.
    """
    file = path / TRAIN_STATE
    if not file.is_file():
        raise ValueError(f"{path}: has weights but no {TRAIN_STATE}; it cannot resume training.")
    if not zipfile.is_zipfile(file):  # its directory is at the end: cut short, it is gone
        why = (
            "empty" if file.stat().st_size == 0 else "not a whole zip archive as torch.save writes"
        )
        raise DamagedCheckpoint(corrupt_message(file, why, "Use another checkpoint"))
    try:
        state: dict[str, Any] = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise DamagedCheckpoint(refused_message(file, e)) from None  # torch's advice is unsafe
    except (RuntimeError, EOFError, OSError) as e:
        # A damaged zip fails in torch's reader (RuntimeError).
        why = (str(e).splitlines() or [type(e).__name__])[0]  # EOFError has no message
        raise DamagedCheckpoint(corrupt_message(file, why, "Use another checkpoint")) from e
    return state


def refused_message(file: Path, error: pickle.UnpicklingError) -> str:
    """What to say of a state `file` that torch's weights-only unpickler refused.

    Its own message advises loading with weights_only=False, which runs whatever the file
    holds: only what was refused is kept from it.
    """
    text = str(error)
    if found := re.search(r"GLOBAL ([\w.]+)", text):
        what = f"a reference to `{found[1]}`, code that a gpt2repro checkpoint never holds"
    else:
        lines = [ln.strip() for ln in text.splitlines()[1:] if ln.strip()]
        unsafe = ("weights_only", "safe_globals", "Check the documentation")
        detail = next((ln for ln in lines if not any(u in ln for u in unsafe)), None)
        what = "something that a gpt2repro checkpoint never holds"
        what += f" ({detail.removeprefix('WeightsUnpickler error: ')})" if detail else ""
    return (
        f"{file}: refused for safety: it holds {what} (checkpoints hold only tensors, numbers and "
        f"plain containers). Nothing in it was run. The file was changed after it was written, by "
        f"damage or on purpose: do not load it by other means. Use another checkpoint."
    )


def check_files(path: Path) -> dict[str, Any]:
    """Read what resuming from checkpoint `path` will read, without the tensors: meta.json
    (returned), the weights' header and the training state's structure. Raises what loading
    would."""
    meta = read_meta(path)
    try:
        with safe_open(str(path / WEIGHTS), framework="pt"):
            pass  # opening reads and checks the header: every tensor within the file
    except SafetensorError as e:
        raise DamagedCheckpoint(corrupt_message(path / WEIGHTS, e, "Use another checkpoint")) from e
    load_train_state(path, mmap=True)
    return meta


def restore_train_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    dist: DistInfo | None = None,
) -> dict[str, Any]:
    """Load weights, optimizer, scaler and this rank's RNG states; returns meta.json.

    Every rank calls this (restoring FSDP shards is collective).
    """
    dist = dist or DistInfo()
    meta = read_meta(path)
    restore_weights(path, model)
    state = load_train_state(path)
    restore_optimizer(optimizer, state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    per_rank = state.get("rng_per_rank") or [state["rng"]]
    if dist.rank < len(per_rank):
        set_rng_state(per_rank[dist.rank])
    else:  # a rank the saving run did not have: a stream of its own, not rank 0's masks again
        set_rng_state(state["rng"])
        torch.manual_seed(int(torch.randint(2**62, ())) + dist.rank)
    return meta


def step_of(path: Path) -> int:
    """The step in a `step_NNNNNN` checkpoint's name."""
    return int(path.name.removeprefix("step_"))


def step_dirs(ckpt_root: Path) -> list[Path]:
    """Valid step_NNNNNN checkpoints under `ckpt_root`, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [
        p
        for p in ckpt_root.glob("step_*")
        if p.is_dir()
        and p.name.removeprefix("step_").isdigit()
        and is_checkpoint(p)
        and (p / TRAIN_STATE).is_file()
    ]
    return sorted(found, key=step_of)


def fallback_advice(source: Path) -> str:
    """What to resume from instead of damaged step checkpoint `source`, as a sentence."""
    if not source.name.removeprefix("step_").isdigit():  # best, or a copy elsewhere
        return "Pass another checkpoint to --checkpoint.resume."
    older = [p for p in step_dirs(source.parent) if step_of(p) < step_of(source)]
    if not older:
        return (
            f"There is no older step checkpoint in {source.parent}: start a new run "
            f"(drop --checkpoint.resume)."
        )
    return (
        f"Resume from the next older checkpoint with --checkpoint.resume {older[-1]}, or delete "
        f"{source} so --checkpoint.resume auto skips it."
    )


def prune(ckpt_root: Path, keep_last: int, newest: Path) -> None:
    """Keep `newest` (the checkpoint just written) and the `keep_last - 1` step checkpoints
    before it; delete older ones. The `best` checkpoint lives apart.

    Ordered by step relative to `newest`, not by what the folder holds: checkpoints of later
    steps (left by a run that this one resumed from an earlier point) are never deleted,
    and neither is `newest`, whatever else is there.
    """
    assert keep_last >= 1, f"keep_last={keep_last} must be >= 1"
    older = [p for p in step_dirs(ckpt_root) if step_of(p) < step_of(newest)]
    for old in older[: max(0, len(older) - (keep_last - 1))]:
        delete_directory(old)


def set_aside_after(ckpt_root: Path, step: int) -> list[Path]:
    """Move step checkpoints later than `step` into `ckpt_root/abandoned/`; returns where they went.

    A run resumed from an earlier checkpoint rewrites the later steps; left in place, the old
    ones would be what `--checkpoint.resume auto` picks next. Moved, not deleted: nothing of
    a run is lost.
    """
    later = [path for path in step_dirs(ckpt_root) if step_of(path) > step]
    return [move_aside(path, ckpt_root / "abandoned" / path.name) for path in later]


def find_resume(choice: str, run_dir: Path) -> Path | None:
    """The checkpoint that `checkpoint.resume = choice` names: none -> None, auto -> the newest
    step checkpoint under `run_dir` (None if there is none), anything else -> that directory."""
    if choice == "none":
        return None
    if choice == "auto":
        found = step_dirs(run_dir / "checkpoints")
        return found[-1] if found else None
    return Path(choice)


def more_minutes(trained_s: float, max_minutes: float) -> str:
    """How to give a run that used up `max_minutes` more time, as a sentence."""
    done = trained_s / 60
    return (
        f"--run.max-minutes counts the training time of every resume ({done:.4g} min so far): "
        f"pass --run.max-minutes above {done:.4g} (e.g. {done + max_minutes:.4g} for "
        f"{max_minutes:.4g} more)"
    )


def resume_point(
    choice: str, run_dir: Path, max_steps: int, max_minutes: float | None = None
) -> tuple[Path, int] | None:
    """The checkpoint `choice` resumes from and its step, read now, so a damaged or unsafe one
    or one past the end of the run (its steps or its minutes) fails before anything else
    happens (the model is built, the device measured). None: a fresh start."""
    source = find_resume(choice, run_dir)
    if source is None:
        return None
    try:
        meta = check_files(source)
    except DamagedCheckpoint as e:
        raise DamagedCheckpoint(f"{e} {fallback_advice(source)}") from None
    step = meta.get("step")
    if not isinstance(step, int):
        raise ValueError(f"{source / META}: no step; it is not a training checkpoint.")
    if step > max_steps:
        raise ValueError(
            f"{source} is at step {step}, past run.max_steps={max_steps}: nothing to train. "
            f"Pass --run.max-steps above {step} to train on from it, or drop "
            f"--checkpoint.resume to start a new run."
        )
    trained_s = meta.get("train_state", {}).get("train_seconds", 0.0)
    if max_minutes is not None and trained_s >= 60 * max_minutes:
        raise ValueError(
            f"{source} has already trained {trained_s / 60:.4g} min, the whole "
            f"run.max_minutes={max_minutes:.4g}: nothing to train. "
            f"{more_minutes(trained_s, max_minutes)} to train on from it."
        )
    return source, step
