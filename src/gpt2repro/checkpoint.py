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

import io
import json
import pickle
import random
import re
import shutil
import zipfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gpt2repro.atomic import atomic_directory
from gpt2repro.distributed import DistInfo, gather_objects
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

    whole: dict[str, Any] = get_model_state_dict(gpt, options=_whole_tensors())  # {} off rank 0
    if gpt.config.tie_embeddings:
        whole.pop(TIED_KEY, None)
    return whole


def _whole_tensors(from_rank0: bool = False) -> Any:
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


def _weight_names(path: Path) -> set[str]:
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
    _check_keys(path, _weight_names(path), gpt)
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

    set_model_state_dict(gpt, state, options=_whole_tensors(from_rank0=True))


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

    sd: Any = get_optimizer_state_dict(gpt, optimizer, options=_whole_tensors())  # {} off rank 0
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
    set_optimizer_state_dict(gpt, optimizer, named, options=_whole_tensors(from_rank0=True))


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
    _weight_names(path)  # reading the header checks it: every tensor within the file
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
