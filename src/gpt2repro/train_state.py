"""A training checkpoint's `train_state.pt`: optimizer, grad scaler and every RNG state,
beside the weights that checkpoint.py writes, so a run resumes bit for bit.

Loaded with torch.load(weights_only=True): tensors and plain containers only; a file that
holds anything else (code, objects) is refused for safety, never loaded another way.
Several ranks: rank 0 writes after gathering what only the others hold (FSDP optimizer
shards through torch.distributed.checkpoint; every rank's RNG state); the optimizer state
is keyed by each parameter's position in the optimizer's groups, as
`optimizer.state_dict()` keys it, so a checkpoint resumes on any number of ranks.
"""

from __future__ import annotations

import io
import pickle
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt2repro.checkpoint import (
    TRAIN_STATE,
    DamagedCheckpoint,
    gather_model_state,
    read_meta,
    restore_weights,
    save_checkpoint,
    unwrap,
    weight_names,
    whole_tensors,
)
from gpt2repro.distributed import DistInfo, gather_objects
from gpt2repro.model import GPT
from gpt2repro.parallelize import is_sharded
from gpt2repro.pretrained import corrupt_message
from gpt2repro.tokenizer import Tokenizer


def upgrade_state(state: dict[str, Any]) -> dict[str, Any]:
    """train_state.pt's contents `state` in the current layout.

    Before 431688d every rank saved each visible GPU's CUDA generator (a list): this
    process's GPU's is kept (the last one's on a machine with fewer GPUs). Optimizer groups
    from before ffd9590 lack `peak_lr`: nothing to patch, `restore_optimizer` sets every
    group's from the resuming run.
    """
    for rng in [state["rng"], *state.get("rng_per_rank", [])]:
        cuda = rng.get("cuda")
        if isinstance(cuda, list | tuple):
            gpu = torch.cuda.current_device() if torch.cuda.is_available() else 0
            rng["cuda"] = cuda[min(gpu, len(cuda) - 1)]
    return state


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
        torch.cuda.set_rng_state(state["cuda"])


def gather_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, keep: bool
) -> dict[str, Any]:
    """`optimizer.state_dict()` with FSDP shards gathered (on the CPU) where `keep` (rank 0),
    else {}: the single-process layout, which any world size and mode can load.

    Under FSDP a collective: every rank calls it, rank 0 keeps.
    """
    gpt = unwrap(model)
    if not is_sharded(gpt) or not optimizer.state:
        # An empty state has nothing to gather; DCP would first fill it by a step at lr 0,
        # which counts as AdamW's first step and so changes the later ones.
        return optimizer.state_dict() if keep else {}
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    sd: Any = get_optimizer_state_dict(gpt, optimizer, options=whole_tensors())  # {} off rank 0
    if not sd:
        return {}
    # DCP keys by parameter name; the file by position, the order of the groups' params.
    pid = {name: i for i, name in enumerate(n for g in sd["param_groups"] for n in g["params"])}
    return {
        "state": {pid[name]: v for name, v in sd["state"].items()},
        "param_groups": [g | {"params": [pid[n] for n in g["params"]]} for g in sd["param_groups"]],
    }


def restore_optimizer(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, sd: dict[str, Any]
) -> None:
    """Load a single-process-layout optimizer state `sd` (from checkpoint `path`).

    The groups' learning-rate peaks (`peak_lr`) stay this run's: the schedule is the run's
    config (a resume may change --optim.lr), the moments and step counts the checkpoint's.
    Under FSDP a collective: rank 0 sends each rank its shard of every tensor, so only rank
    0's `sd` needs the tensors. Every rank checks the groups first, so all refuse alike.
    """
    saved = [len(g["params"]) for g in sd["param_groups"]]
    mine = [len(g["params"]) for g in optimizer.param_groups]
    if saved != mine:
        raise ValueError(
            f"{path / TRAIN_STATE}: optimizer state for parameter groups of {saved} tensors, "
            f"this run's optimizer has {mine}: it was saved with another optimizer. Resume "
            f"with the optim settings it was trained with."
        )
    peaks = [g.get("peak_lr") for g in optimizer.param_groups]
    _load_optimizer(unwrap(model), optimizer, sd)
    for group, peak in zip(optimizer.param_groups, peaks, strict=True):
        if peak is not None:
            group["peak_lr"] = peak


def _load_optimizer(gpt: GPT, optimizer: torch.optim.Optimizer, sd: dict[str, Any]) -> None:
    if not is_sharded(gpt) or not sd["state"]:
        optimizer.load_state_dict(sd)
        return
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    named: Any = {}
    if torch.distributed.get_rank() == 0:  # DCP keys by name: each position's parameter's
        names = {p: name for name, p in gpt.named_parameters()}  # a tied head once, as DCP
        fqn = [names[p] for g in optimizer.param_groups for p in g["params"]]
        named = {
            "state": {fqn[i]: v for i, v in sd["state"].items()},
            "param_groups": [
                g | {"params": [fqn[i] for i in g["params"]]} for g in sd["param_groups"]
            ],
        }
    set_optimizer_state_dict(gpt, optimizer, named, options=whole_tensors(from_rank0=True))


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
    optim = gather_optimizer_state(model, optimizer, keep=dist.is_main)
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
    return upgrade_state(state)


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
    weight_names(path)  # reading the header checks it: every tensor within the file
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
    # Under FSDP rank 0 sends the optimizer's tensors: the others map the file, not read it.
    state = load_train_state(path, mmap=not dist.is_main and is_sharded(unwrap(model)))
    restore_optimizer(path, model, optimizer, state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    per_rank = state.get("rng_per_rank") or [state["rng"]]
    if dist.rank < len(per_rank):
        set_rng_state(per_rank[dist.rank])
    else:  # a rank the saving run did not have: a stream of its own, not rank 0's masks again
        set_rng_state(state["rng"])
        torch.manual_seed(int(torch.randint(2**62, ())) + dist.rank)
    return meta
