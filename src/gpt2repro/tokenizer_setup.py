"""Get a training run's tokenizer and token shards in place before the first step.

`data.tokenizer = "train:N"` trains an N-token byte-level BPE on the dataset's training
documents (never its validation documents) once, and caches it under the data root.
Rank 0 does the work; the other ranks wait (`distributed.wait_for_main`, no 10-minute
limit) and then read the result.
"""

from __future__ import annotations

from pathlib import Path

from gpt2repro.config import DataConfig
from gpt2repro.distributed import DistInfo, print0, wait_for_main
from gpt2repro.tokenizer import train_bpe_from_texts


def tokenizer_path(cfg: DataConfig, vocab_size: int) -> Path:
    return cfg.data_root / "tokenizers" / f"{cfg.dataset}-bpe{vocab_size}.json"


def train_dataset_tokenizer(cfg: DataConfig, vocab_size: int, dist: DistInfo) -> Path:
    """Train (once) a BPE on the training split of `cfg.dataset`; returns the tokenizer file."""
    from gpt2repro.data.prepare import assign_split, open_source

    path = tokenizer_path(cfg, vocab_size)
    if path.is_file():
        return path
    source = open_source(cfg.dataset)
    fraction = source.val_fraction or 0.0
    texts = (
        d.text for d in source.documents() if (d.split or assign_split(d.key, fraction)) == "train"
    )
    print0(
        dist,
        f"training a {vocab_size}-token byte-level BPE on {cfg.dataset} (train split) -> {path}",
    )
    train_bpe_from_texts(texts, vocab_size, path, show_progress=dist.is_main)
    return path


def resolve_tokenizer_spec(cfg: DataConfig, dist: DistInfo) -> str:
    spec = cfg.tokenizer
    if not spec.startswith("train:"):
        return spec
    try:
        vocab_size = int(spec.removeprefix("train:"))
    except ValueError:
        raise ValueError(
            f"data.tokenizer={spec!r}: write train:N with N the vocabulary size, e.g. train:4096."
        ) from None
    path = tokenizer_path(cfg, vocab_size)
    if dist.is_main:
        train_dataset_tokenizer(cfg, vocab_size, dist)
    wait_for_main(dist)
    return str(path)


def ensure_dataset(cfg: DataConfig, dist: DistInfo) -> tuple[Path, str]:
    """The prepared dataset's folder and the tokenizer spec, preparing both when missing."""
    from gpt2repro.data.commands import resolve_dataset
    from gpt2repro.data.prepare import prepare_dataset

    spec = resolve_tokenizer_spec(cfg, dist)
    if dist.is_main and cfg.prepare_if_missing and not Path(cfg.dataset).is_dir():
        prepare_dataset(cfg.dataset, cfg.data_root, spec)
    wait_for_main(dist)
    return resolve_dataset(cfg.dataset, cfg.data_root, spec), spec
