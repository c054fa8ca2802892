"""Training setup's step "prepare what is missing": the run's tokenizer and token shards.

`data.tokenizer = "train:N"` trains an N-token byte-level BPE on the dataset's training
documents (never its validation documents) once, and caches it under the data root
(`data.locate.tokenizer_path`). A known dataset not yet prepared with the run's tokenizer
is prepared; a dataset already prepared under `<data_root>/<name>` is used whatever
`prepare` command made it (e.g. `prepare files PATHS --name tinystories`, the offline
route). Rank 0 does the work; the other ranks wait (`distributed.wait_for_main`, no
10-minute limit). Finding the result is the next step, `data.locate.locate`.

This is not in `data/` because it reads the run's config and coordinates its ranks.
"""

from __future__ import annotations

from pathlib import Path

from gpt2repro.config import DataConfig
from gpt2repro.data.locate import find_prepared, tokenizer_path, tokenizer_spec, trained_vocab_size
from gpt2repro.data.sources import BUILT_IN
from gpt2repro.distributed import DistInfo, wait_for_main
from gpt2repro.tokenizer import load_tokenizer, train_bpe_from_texts


def prepare_missing(cfg: DataConfig, dist: DistInfo) -> None:
    """Train the `train:N` tokenizer and prepare a known dataset, each only when missing."""
    from gpt2repro.data.prepare import prepare_dataset

    vocab_size = trained_vocab_size(cfg.tokenizer)  # on every rank: a bad spec stops them all
    if dist.is_main:
        if vocab_size is not None:
            train_dataset_tokenizer(cfg, vocab_size)
        spec = tokenizer_spec(cfg.data_root, cfg.dataset, cfg.tokenizer)
        found = find_prepared(cfg.data_root, cfg.dataset, load_tokenizer(spec))
        if cfg.prepare_if_missing and cfg.dataset in BUILT_IN and found is None:
            prepare_dataset(cfg.dataset, cfg.data_root, spec)
    wait_for_main(dist)


def train_dataset_tokenizer(cfg: DataConfig, vocab_size: int) -> Path:
    """Train (once) a BPE on the training split of `cfg.dataset`; returns the tokenizer file."""
    from gpt2repro.data.hub import SourceUnreachable
    from gpt2repro.data.prepare import assign_split, open_source

    path = tokenizer_path(cfg.data_root, cfg.dataset, vocab_size)
    if path.is_file():
        return path
    if cfg.dataset not in BUILT_IN:
        raise ValueError(
            f"data.tokenizer=train:{vocab_size} trains on the documents of a known dataset "
            f"({', '.join(BUILT_IN)}), not {cfg.dataset!r}. For local "
            f"files train one with `gpt2repro tokenizer train FILES --vocab-size {vocab_size}`, "
            f"prepare the files with `--tokenizer TOKENIZER.json` and train with --data.tokenizer TOKENIZER.json."
        )
    try:
        source = open_source(cfg.dataset)
    except SourceUnreachable as e:
        raise SourceUnreachable(e.problem, _local_tokenizer_route(cfg, vocab_size)) from None
    fraction = source.val_fraction or 0.0
    texts = (
        d.text for d in source.documents() if (d.split or assign_split(d.key, fraction)) == "train"
    )
    print(
        f"training a {vocab_size}-token byte-level BPE on {cfg.dataset} (train split) -> {path}",
        flush=True,
    )
    train_bpe_from_texts(texts, vocab_size, path, show_progress=True)
    return path


def _local_tokenizer_route(cfg: DataConfig, vocab_size: int) -> str:
    """Offline, train:N's tokenizer and tokens come from local copies of the dataset's files."""
    from gpt2repro.data.hub import offline_hint

    path = tokenizer_path(cfg.data_root, cfg.dataset, vocab_size)
    return (
        f"data.tokenizer=train:{vocab_size} trains a BPE on {cfg.dataset}'s training documents. "
        f"With local copies of its files, train it with `gpt2repro tokenizer train PATHS... "
        f"--vocab-size {vocab_size} --out {path}`; this run then finds it, and the tokens once "
        f"prepared with it. {offline_hint(cfg.dataset, str(path), cfg.data_root)}"
    )
