"""Finding a prepared dataset and its tokenizer; nothing here prepares or trains anything.

A dataset is named by its folder (one holding `manifest.json`) or by its name under a data
root (`manifest.dataset_dir`). A tokenizer spec is `gpt2`, a tokenizer .json, or `train:N`:
the N-token BPE trained on the dataset's training split, which lives at `tokenizer_path`.
A lookup that finds nothing raises FileNotFoundError naming the `gpt2repro prepare` command
that creates what is missing.
"""

from __future__ import annotations

from pathlib import Path

from gpt2repro.data.manifest import (
    MANIFEST,
    PROGRESS,
    dataset_dir,
    prepare_command,
    prepared_under_name,
    read_manifest,
)
from gpt2repro.data.sources import BUILT_IN, DATASETS
from gpt2repro.tokenizer import Tokenizer, load_tokenizer


def tokenizer_path(data_root: Path, dataset: str, vocab_size: int) -> Path:
    """Where `train:N` keeps the BPE trained on `dataset`'s training split."""
    return Path(data_root) / "tokenizers" / f"{dataset}-bpe{vocab_size}.json"


def trained_vocab_size(spec: str) -> int | None:
    """N of a `train:N` tokenizer spec; None for any other spec."""
    if not spec.startswith("train:"):
        return None
    try:
        return int(spec.removeprefix("train:"))
    except ValueError:
        raise ValueError(
            f"data.tokenizer={spec!r}: write train:N with N the vocabulary size, e.g. train:4096."
        ) from None


def tokenizer_spec(data_root: Path, dataset: str, spec: str) -> str:
    """`spec` as `load_tokenizer` takes it: `train:N` becomes the trained tokenizer's file."""
    vocab_size = trained_vocab_size(spec)
    return spec if vocab_size is None else str(tokenizer_path(data_root, dataset, vocab_size))


def locate(
    data_root: Path, dataset: str, tokenizer: str, init_from: str | None = None
) -> tuple[Path, Tokenizer]:
    """A training run's dataset folder and tokenizer, as `--data.*` names them.

    `dataset` is a folder or a name under `data_root`; `tokenizer` a spec (`train:N` too).
    The dataset's tokens must come from that tokenizer, which `init_from` (a fine-tune's
    source) fixes when given.
    """
    spec = tokenizer_spec(data_root, dataset, tokenizer)
    tok = load_tokenizer(spec)
    found = find_prepared(data_root, dataset, tok) or prepared_otherwise(data_root, dataset)
    by_name = len(Path(dataset).parts) == 1  # a path gets resolve_dataset's message
    if found is None and by_name and dataset not in DATASETS and not Path(dataset).is_dir():
        raise FileNotFoundError(
            f"No prepared dataset {dataset!r} in {data_root} (for {tok.identifier} "
            f"tokens). Prepare local files under that name with `gpt2repro prepare files PATHS "
            f"--name {dataset} --data-dir {data_root}`, or pass --data.dataset one of "
            f"{', '.join(BUILT_IN)} or a prepared dataset's folder."
        )
    data_dir = found or resolve_dataset(dataset, data_root, spec)
    check_tokenizer(data_dir, tok, tokenizer, init_from)
    return data_dir, tok


def find_prepared(data_root: Path, dataset: str, tokenizer: Tokenizer) -> Path | None:
    """The finished dataset `dataset` names: a folder, or a name under `data_root`."""
    by_name = dataset_dir(data_root, dataset, tokenizer.identifier)
    for candidate in (Path(dataset), by_name):
        if (candidate / MANIFEST).is_file():
            return candidate
    return None


def prepared_otherwise(data_root: Path, dataset: str) -> Path | None:
    """The dataset prepared under this name with another tokenizer, if any (to say so)."""
    return next(iter(prepared_under_name(data_root, dataset)), None)


def check_tokenizer(
    data_dir: Path, tokenizer: Tokenizer, spec: str, init_from: str | None = None
) -> None:
    """The dataset's tokens must come from the tokenizer the run trains with (`spec`)."""
    stored = read_manifest(data_dir)["tokenizer"]
    if stored["identifier"] != tokenizer.identifier and init_from is not None:
        # A fine-tune cannot change its tokenizer: only the data can change.
        raise ValueError(
            f"{data_dir} was prepared with tokenizer {stored['identifier']}, but the model "
            f"of --model.init-from {init_from} uses {tokenizer.identifier}. Prepare the data "
            f"with the model's tokenizer: `{prepare_command(data_dir, spec)}`, then pass "
            f"--data.dataset {data_dir.name} (by name the run finds the copy for its tokenizer)."
        )
    if stored["identifier"] != tokenizer.identifier:
        raise ValueError(
            f"{data_dir} was prepared with tokenizer {stored['identifier']}, but this run uses "
            f"{tokenizer.identifier} (--data.tokenizer {spec}). Train on it with "
            f"--data.tokenizer {stored['spec']}, or prepare the data again with the run's "
            f"tokenizer (`gpt2repro prepare ... --tokenizer ...`) under another --name or "
            f"--data-dir."
        )


def resolve_dataset(dataset: str, data_dir: Path, tokenizer: str = "gpt2") -> Path:
    """The folder of `dataset`: a path to it, or a name under `data_dir`."""
    as_path = Path(dataset)
    if (as_path / MANIFEST).is_file() or (as_path / PROGRESS).is_file():
        return as_path
    by_name = dataset_dir(data_dir, dataset, load_tokenizer(tokenizer).identifier)
    if by_name != as_path and by_name.is_dir():  # reading its manifest says what is missing
        return by_name
    # Something that is there but is no dataset; a plain name that is only a file here
    # (not a folder) still means a dataset's name.
    if as_path.is_dir() or (as_path.exists() and len(as_path.parts) > 1):
        raise _not_a_dataset(as_path, data_dir, tokenizer)
    known = sorted(p.name for p in data_dir.glob("*") if (p / MANIFEST).is_file())
    # A path names the folder itself; a plain name is looked up under data_dir.
    target = as_path if len(as_path.parts) > 1 else data_dir / dataset
    create = prepare_command(target, tokenizer)
    looked = " and ".join(dict.fromkeys(str(p) for p in (as_path, by_name)))
    raise FileNotFoundError(
        f"No prepared dataset {dataset!r} (looked for {looked}). "
        f"Prepared in {data_dir}: {', '.join(known) or 'none'}. "
        f"Create it with `{create}`."
    )


def _not_a_dataset(path: Path, data_dir: Path, tokenizer: str) -> FileNotFoundError:
    """`path` exists but holds no manifest: say what a dataset argument is, and how to make one."""
    expected = (
        f"Pass a prepared dataset's folder (one holding {MANIFEST}), or the name of one "
        f"under {data_dir}."
    )
    if path.is_dir() and not any(path.iterdir()):
        return FileNotFoundError(
            f"{path} is an empty folder, not a prepared dataset. {expected} Create it with "
            f"`{prepare_command(path, tokenizer)}`."
        )
    what, name = (
        ("a file", path.stem) if path.is_file() else (f"a folder without {MANIFEST}", path.name)
    )
    create = f"gpt2repro prepare files {path} --name {name} --data-dir {data_dir}"
    if tokenizer != "gpt2":
        create += f" --tokenizer {tokenizer}"
    return FileNotFoundError(
        f"{path} is {what}, not a prepared dataset. {expected} To use the text in it, "
        f"prepare it first: `{create}`."
    )
