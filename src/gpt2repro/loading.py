"""One entry point for every place a model can come from.

A model source is one of:
  * a gpt2repro checkpoint directory (meta.json + model.safetensors),
  * a Hugging Face GPT-2 directory (config.json + model.safetensors), e.g. from `gpt2repro export`,
  * a hub id: gpt2, gpt2-medium, gpt2-large, gpt2-xl (downloaded when the hub is reachable),
  * `init:PRESET`, a freshly initialised model of a model preset such as `init:gpt2_124m`
    or `init:tiny` (`presets.MODEL_PRESETS`; seeded by the caller),
  * a training run's directory, standing for its best checkpoint (else its newest step_*):
    `resolve_source` picks it and says which, for every command that takes a model.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2repro import checkpoint, pretrained
from gpt2repro.model import GPT
from gpt2repro.presets import model_preset
from gpt2repro.run_dir import STEP_PREFIX, RunDir, step_of
from gpt2repro.tokenizer import Tokenizer, load_tokenizer

HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_ORG = "openai-community/"
SOURCE_HELP = (
    "a checkpoint directory, a training run directory, an exported Hugging Face directory, "
    f"a hub id ({', '.join(HUB_IDS)}) or init:PRESET"
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
    source = resolve_source(source)
    path = Path(source)
    if source.startswith("init:"):
        model = GPT(model_preset(source.removeprefix("init:"))).to(device)
        tok_spec = "gpt2"
        tok = load_tokenizer(tokenizer or tok_spec)
    elif path.is_dir() and checkpoint.is_checkpoint(path):
        # A damaged file raises checkpoint.DamagedCheckpoint, naming it and what to do.
        model, tok, _ = checkpoint.load_model(path, device, tokenizer)
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


def resolve_source(source: str, quiet: bool = False) -> str:
    """`source`, or for a training run's directory the checkpoint in it that stands for the
    run (its best, else its newest step), announced on stderr unless `quiet`."""
    path = Path(source)
    if not is_run_directory(path):
        return source
    chosen, why = run_checkpoint(path)
    if not quiet:
        print(f"using {chosen} ({why})", file=sys.stderr, flush=True)
    return str(chosen)


def is_run_directory(path: Path) -> bool:
    """A directory `gpt2repro train` wrote (it holds checkpoints/), not a checkpoint itself."""
    return (
        path.is_dir() and not checkpoint.is_checkpoint(path) and RunDir(path).checkpoints.is_dir()
    )


def run_checkpoint(run_dir: Path) -> tuple[Path, str]:
    """The checkpoint a run directory stands for, and why that one, as words."""
    run = RunDir(run_dir)
    root = run.checkpoints
    if checkpoint.is_checkpoint(run.best):
        return run.best, "the run's best checkpoint"
    steps = [
        p
        for p in root.glob(f"{STEP_PREFIX}*")
        if p.name.removeprefix(STEP_PREFIX).isdigit() and checkpoint.is_checkpoint(p)
    ]
    if steps:
        return max(steps, key=step_of), "the run's newest checkpoint; it has no best"
    raise FileNotFoundError(
        f"{run_dir}: a training run directory with no checkpoint yet (nothing usable in {root}). "
        f"Let the run save one (at the end, or every --checkpoint.interval steps), or pass "
        f"{SOURCE_HELP}."
    )
