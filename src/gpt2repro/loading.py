"""One entry point for every place a model can come from.

A model source is one of:
  * a gpt2repro checkpoint directory (meta.json + model.safetensors),
  * a Hugging Face GPT-2 directory (config.json + model.safetensors), e.g. from `gpt2repro export`,
  * a hub id: gpt2, gpt2-medium, gpt2-large, gpt2-xl (downloaded when the hub is reachable),
  * `init:PRESET`, a freshly initialised model of a preset shape (seeded by the caller).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2repro import checkpoint, pretrained
from gpt2repro.model import GPT
from gpt2repro.presets import model_preset
from gpt2repro.tokenizer import Tokenizer, load_tokenizer

RUN_CHECKPOINTS = "checkpoints"  # where `gpt2repro train` saves inside a run directory
HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_ORG = "openai-community/"
SOURCE_HELP = (
    "a checkpoint directory, an exported Hugging Face directory, a hub id "
    f"({', '.join(HUB_IDS)}) or init:PRESET"
)


@dataclass
class Loaded:
    model: GPT
    tokenizer: Tokenizer
    source: str


def load_source(
    source: str, device: str | torch.device = "cpu", tokenizer: str | None = None
) -> Loaded:
    """Load model and tokenizer from `source` (see module docstring); `tokenizer` overrides the stored one."""
    path = Path(source)
    if source.startswith("init:"):
        model = GPT(model_preset(source.removeprefix("init:"))).to(device)
        tok_spec = "gpt2"
        tok = load_tokenizer(tokenizer or tok_spec)
    elif path.is_dir() and checkpoint.is_checkpoint(path):
        # A damaged file raises checkpoint.DamagedCheckpoint, naming it and what to do.
        model, tok, _ = checkpoint.load_model(path, device, tokenizer)
    elif path.is_dir() and (path / RUN_CHECKPOINTS).is_dir():
        raise ValueError(_run_directory_help(path))
    elif (
        (path.is_dir() and (path / "config.json").is_file())
        or source in HUB_IDS
        or source.startswith(HUB_ORG)
    ):
        model = pretrained.load_hf(source).to(device)
        spec = tokenizer or pretrained.hf_tokenizer_spec(source)
        if spec is None:
            raise ValueError(
                f"{source}: the model has a {model.config.vocab_size}-token vocabulary and no recorded "
                f"tokenizer. Pass --tokenizer with the tokenizer .json it was trained with."
            )
        tok = load_tokenizer(spec)
    elif path.exists():
        raise ValueError(
            f"{source}: neither a gpt2repro checkpoint (meta.json + model.safetensors) nor a "
            f"Hugging Face directory (config.json + model.safetensors). Pass {SOURCE_HELP}."
        )
    else:
        raise FileNotFoundError(f"{source}: no such file or directory. Pass {SOURCE_HELP}.")
    if tok.vocab_size != model.config.vocab_size:
        raise ValueError(
            f"{source}: the model has a vocabulary of {model.config.vocab_size} tokens but the "
            f"tokenizer {tok.identifier!r} has {tok.vocab_size}. Use the tokenizer the model was "
            f"trained with (pass --tokenizer with the matching tokenizer file)."
        )
    return Loaded(model=model, tokenizer=tok, source=source)


def _run_directory_help(run_dir: Path) -> str:
    """What to pass instead of a training run's directory: one of its checkpoints."""
    root = run_dir / RUN_CHECKPOINTS
    found = [p for p in sorted(root.iterdir()) if p.is_dir() and checkpoint.is_checkpoint(p)]
    names = ", ".join(p.name for p in found) or "none yet"
    return (
        f"{run_dir}: this is a training run directory, not a model. Pass one of its checkpoints: "
        f"{root / 'best'} (or a {root / 'step_NNNNNN'}); found: {names}."
    )
