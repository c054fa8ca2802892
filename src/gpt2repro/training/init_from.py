"""Fine-tuning: a run whose weights start from a trained model (`--model.init-from SOURCE`).

The source is anything `loading.load_source` takes (a hub id, an exported Hugging Face
directory, a checkpoint, a training run's directory), except `init:PRESET`. The run takes
the source's architecture and tokenizer; everything else (optimizer, schedule, data order)
is new, as in nanoGPT's `init_from`.

Which `--model.*` values the user chose is not recorded by the command line, so a value
counts as chosen when it differs from the preset's (`adopt_source`'s `baseline`): a chosen
value that differs from the source's is a conflict, and all of them are refused in one
message. Two fields are the run's own: `dropout` (training, not architecture) and a
smaller `block_size` (the learned position table is cropped, as nanoGPT's
`crop_block_size`; rotary positions need nothing). A larger one is refused: positions past
the source's were never trained.
"""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path

import torch

from gpt2repro import checkpoint
from gpt2repro.config import DataConfig, TrainConfig
from gpt2repro.data.locate import tokenizer_spec
from gpt2repro.hub_models import hub_repo
from gpt2repro.loading import SOURCE_HELP, load_source, resolve_source
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import load_tokenizer

RUN_OWN = ("dropout", "block_size")
"""GPTConfig fields a fine-tune sets itself; every other field is the source's."""
WPE = "transformer.wpe.weight"


def read_source(source: str, quiet: bool = False) -> tuple[str, GPTConfig, str]:
    """The source as loaded (a run directory becomes its checkpoint, announced unless
    `quiet`), its architecture and its tokenizer spec. A checkpoint's are read from its
    meta.json; any other source loads."""
    check_source(source)
    resolved = resolve_source(source, quiet)
    path = Path(resolved)
    if path.is_dir() and checkpoint.is_checkpoint(path):
        meta = checkpoint.read_meta(path)
        spec = checkpoint.checkpoint_tokenizer(path, meta).spec
        return resolved, GPTConfig(**meta["model_config"]), spec
    loaded = load_source(resolved)
    return resolved, loaded.model.config, loaded.tokenizer.spec


def check_source(source: str) -> None:
    """A source that cannot be a trained model, refused before anything loads."""
    if source.startswith("init:"):
        raise ValueError(
            f"--model.init-from {source}: fine-tuning starts from a trained model; a fresh "
            f"{source.removeprefix('init:')} model is --preset/--model.* without --model.init-from."
        )
    if hub_repo(source) is None and not Path(source).expanduser().exists():
        raise FileNotFoundError(
            f"--model.init-from {source}: no such file or directory. Pass {SOURCE_HELP}. "
            f"A training run's directory exists once its run has saved a checkpoint: for "
            f"the finetune_shakespeare_cpu preset, run `gpt2repro train` first."
        )


def adopt_source(cfg: TrainConfig, baseline: TrainConfig, quiet: bool = False) -> TrainConfig:
    """`cfg` with the source's architecture and tokenizer, or one ValueError listing every
    value chosen against the source (chosen: different from `baseline`, the preset)."""
    assert cfg.init.source is not None, "adopt_source needs --model.init-from"
    source, arch, tokenizer = read_source(cfg.init.source, quiet)
    conflicts = []
    for f in fields(GPTConfig):
        mine, theirs = getattr(cfg.model, f.name), getattr(arch, f.name)
        chosen = mine != getattr(baseline.model, f.name)
        if f.name not in RUN_OWN and chosen and mine != theirs:
            conflicts.append(f"model.{f.name}={mine} (the source has {theirs})")
    block_size = cfg.model.block_size if cfg.model.block_size != baseline.model.block_size else 0
    if block_size > arch.block_size:
        conflicts.append(
            f"model.block_size={block_size} (the source has {arch.block_size}; it may only "
            f"shrink: positions past the source's were never trained)"
        )
    if cfg.data.tokenizer != baseline.data.tokenizer:  # chosen: it must be the source's
        if same_tokenizer(cfg.data, tokenizer):
            tokenizer = cfg.data.tokenizer  # the user's name for it, e.g. a file outside the source
        else:
            conflicts.append(f"data.tokenizer={cfg.data.tokenizer} (the source has {tokenizer})")
    if conflicts:
        raise ValueError(
            f"--model.init-from {cfg.init.source}: the run takes the source's architecture "
            f"and tokenizer, but these flags contradict it: {'; '.join(conflicts)}. Drop "
            f"them (only --model.dropout and a smaller --model.block-size are the run's own)."
        )
    model = replace(arch, dropout=cfg.model.dropout, block_size=block_size or arch.block_size)
    return replace(
        cfg,
        model=model,
        init=replace(cfg.init, source=source),
        data=replace(cfg.data, tokenizer=tokenizer),
    )


def same_tokenizer(data: DataConfig, source_spec: str) -> bool:
    """Whether `data.tokenizer` maps text to the same ids as the source's tokenizer (the
    same identifier); a `train:N` tokenizer not trained yet cannot be."""
    spec = tokenizer_spec(data.data_root, data.dataset, data.tokenizer)
    if spec != "gpt2" and not Path(spec).is_file():
        return False
    return load_tokenizer(spec).identifier == load_tokenizer(source_spec).identifier


def load_source_weights(gpt: GPT, source: str) -> None:
    """Copy the source's weights into `gpt` (built for the run: same architecture, its own
    dropout, perhaps a shorter context), cropping the learned position table."""
    loaded = load_source(source, "cpu").model
    expected = replace(loaded.config, dropout=gpt.config.dropout, block_size=gpt.config.block_size)
    differ = [
        f"{f.name} {getattr(expected, f.name)} != {getattr(gpt.config, f.name)}"
        for f in fields(GPTConfig)
        if getattr(expected, f.name) != getattr(gpt.config, f.name)
    ]
    if differ or gpt.config.block_size > loaded.config.block_size:
        mismatch = ", ".join(differ) or "a longer block_size"
        raise ValueError(
            f"{source}: the source's model does not fit this run's ({mismatch}). Build the "
            f"run's config with training.init_from.adopt_source, as `gpt2repro train` does."
        )
    state = loaded.state_dict()
    if WPE in state:  # (block_size, C): the first rows are the positions the run uses
        state[WPE] = state[WPE][: gpt.config.block_size]
    with torch.no_grad():
        gpt.load_state_dict(state)
