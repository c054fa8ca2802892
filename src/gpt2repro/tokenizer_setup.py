"""Get a training run's tokenizer and token shards in place before the first step.

`data.tokenizer = "train:N"` trains an N-token byte-level BPE on the dataset's training
documents (never its validation documents) once, and caches it under the data root.
Rank 0 does the work; the other ranks wait (`distributed.wait_for_main`, no 10-minute
limit) and then read the result.

A dataset already prepared under `<data_root>/<name>` is used whatever `prepare` command
made it (e.g. `prepare files PATHS --name tinystories`, the offline route); only known
dataset names are prepared when missing.
"""

from __future__ import annotations

from pathlib import Path

from gpt2repro.config import DataConfig
from gpt2repro.data import manifest as mf
from gpt2repro.distributed import DistInfo, print0, wait_for_main
from gpt2repro.tokenizer import Tokenizer, load_tokenizer, train_bpe_from_texts


def tokenizer_path(cfg: DataConfig, vocab_size: int) -> Path:
    return cfg.data_root / "tokenizers" / f"{cfg.dataset}-bpe{vocab_size}.json"


def train_dataset_tokenizer(cfg: DataConfig, vocab_size: int, dist: DistInfo) -> Path:
    """Train (once) a BPE on the training split of `cfg.dataset`; returns the tokenizer file."""
    from gpt2repro.data.hub import SourceUnreachable
    from gpt2repro.data.prepare import DATASETS, assign_split, open_source

    path = tokenizer_path(cfg, vocab_size)
    if path.is_file():
        return path
    if cfg.dataset not in DATASETS or cfg.dataset == "files":
        raise ValueError(
            f"data.tokenizer=train:{vocab_size} trains on the documents of a known dataset "
            f"({', '.join(d for d in DATASETS if d != 'files')}), not {cfg.dataset!r}. For local "
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
    print0(
        dist,
        f"training a {vocab_size}-token byte-level BPE on {cfg.dataset} (train split) -> {path}",
    )
    train_bpe_from_texts(texts, vocab_size, path, show_progress=dist.is_main)
    return path


def _local_tokenizer_route(cfg: DataConfig, vocab_size: int) -> str:
    """Offline, train:N's tokenizer and tokens come from local copies of the dataset's files."""
    from gpt2repro.data.hub import offline_hint

    path = tokenizer_path(cfg, vocab_size)
    return (
        f"data.tokenizer=train:{vocab_size} trains a BPE on {cfg.dataset}'s training documents. "
        f"With local copies of its files, train it with `gpt2repro tokenizer train PATHS... "
        f"--vocab-size {vocab_size} --out {path}`; this run then finds it, and the tokens once "
        f"prepared with it. {offline_hint(cfg.dataset, str(path), cfg.data_root)}"
    )


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


def find_prepared(cfg: DataConfig, tokenizer: Tokenizer) -> Path | None:
    """The finished dataset `cfg.dataset` names: a folder, or a name under the data root."""
    by_name = mf.dataset_dir(cfg.data_root, cfg.dataset, tokenizer.identifier)
    for candidate in (Path(cfg.dataset), by_name):
        if (candidate / mf.MANIFEST).is_file():
            return candidate
    return None


def prepared_otherwise(cfg: DataConfig) -> Path | None:
    """The dataset prepared under this name with another tokenizer, if any (to say so)."""
    return next(iter(mf.prepared_under_name(cfg.data_root, cfg.dataset)), None)


def check_tokenizer(data_dir: Path, tokenizer: Tokenizer, cfg: DataConfig) -> None:
    """The dataset's tokens must come from the tokenizer the run trains with."""
    stored = mf.read_manifest(data_dir)["tokenizer"]
    if stored["identifier"] != tokenizer.identifier:
        raise ValueError(
            f"{data_dir} was prepared with tokenizer {stored['identifier']}, but this run uses "
            f"{tokenizer.identifier} (--data.tokenizer {cfg.tokenizer}). Train on it with "
            f"--data.tokenizer {stored['spec']}, or prepare the data again with the run's "
            f"tokenizer (`gpt2repro prepare ... --tokenizer ...`) under another --name or "
            f"--data-dir."
        )


def ensure_dataset(cfg: DataConfig, dist: DistInfo) -> tuple[Path, Tokenizer]:
    """The prepared dataset's folder and the run's tokenizer, preparing both when missing."""
    from gpt2repro.data.commands import resolve_dataset
    from gpt2repro.data.prepare import DATASETS, prepare_dataset

    spec = resolve_tokenizer_spec(cfg, dist)
    tokenizer = load_tokenizer(spec)
    preparable = cfg.prepare_if_missing and cfg.dataset in DATASETS and cfg.dataset != "files"
    if dist.is_main and preparable and find_prepared(cfg, tokenizer) is None:
        prepare_dataset(cfg.dataset, cfg.data_root, spec)
    wait_for_main(dist)
    found = find_prepared(cfg, tokenizer) or prepared_otherwise(cfg)
    by_name = len(Path(cfg.dataset).parts) == 1  # a path gets resolve_dataset's message
    if found is None and by_name and cfg.dataset not in DATASETS and not Path(cfg.dataset).is_dir():
        raise FileNotFoundError(
            f"No prepared dataset {cfg.dataset!r} in {cfg.data_root} (for {tokenizer.identifier} "
            f"tokens). Prepare local files under that name with `gpt2repro prepare files PATHS "
            f"--name {cfg.dataset} --data-dir {cfg.data_root}`, or pass --data.dataset one of "
            f"{', '.join(d for d in DATASETS if d != 'files')} or a prepared dataset's folder."
        )
    data_dir = found or resolve_dataset(cfg.dataset, cfg.data_root, spec)
    check_tokenizer(data_dir, tokenizer, cfg)
    return data_dir, tokenizer
