"""`manifest.json`: what a prepared dataset holds, and where prepared datasets live.

A dataset prepared with the GPT-2 tokenizer lives in `<data_root>/<name>/`; with any other
tokenizer in `<data_root>/<name>-<tokenizer identifier>/` (e.g. `shakespeare-bpe-1f2e...`),
so preparing the same corpus with two tokenizers never mixes their shards.

The manifest is written last, atomically: its presence means the dataset is complete.

    {
      "format": "gpt2repro-dataset", "format_version": 1, "name": "shakespeare",
      "source": {...how the documents were obtained...},
      "tokenizer": {"identifier": "gpt2", "spec": "gpt2", "vocab_size": 50257, "eot_id": 50256},
      "vocab_size": 50257, "dtype": "uint16",
      "settings": {"shard_tokens": ..., "val_fraction": ..., ...},
      "splits": {"train": {"documents": D, "tokens": N, "bytes": B,
                           "shards": [{"file": "train_000000.bin", "tokens": n, "crc32": c}]},
                 "val": {...}},
      "gpt2repro_version": "0.1.0"
    }

`bytes` counts the UTF-8 bytes of the split's documents (without separators), so
bits-per-byte = loss_nats * tokens / (ln 2 * bytes).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Any

from gpt2repro.atomic import write_text_atomic
from gpt2repro.data.sources import BUILT_IN

MANIFEST = "manifest.json"
PROGRESS = "progress.json"
FORMAT = "gpt2repro-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val")


def dataset_dir(data_root: Path, name: str, tokenizer_identifier: str) -> Path:
    """Directory of dataset `name` tokenized with the tokenizer `tokenizer_identifier`."""
    if tokenizer_identifier == "gpt2":
        return Path(data_root) / name
    return Path(data_root) / f"{name}-{tokenizer_identifier}"


def prepared_under_name(data_root: Path, name: str) -> list[Path]:
    """Finished datasets called `name` under `data_root`, with any tokenizer (gpt2's first).

    `name` may also be a path (`/data/mine`, `runs/data/mine`): its siblings are searched,
    as `Path.glob` takes no absolute pattern.
    """
    base = Path(data_root) / name  # an absolute `name` replaces data_root
    found = [base, *sorted(base.parent.glob(f"{glob.escape(base.name)}-bpe-*"))]
    return [p for p in found if (p / MANIFEST).is_file()]


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON to `path` through a temporary file and a rename, so readers never see half."""
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def prepare_command(data_dir: Path, tokenizer: str = "gpt2") -> str:
    """A `gpt2repro prepare` command line that creates a dataset in `data_dir`.

    A built-in dataset's name stands alone; any other name can only be local files.
    """
    data_dir = Path(data_dir)
    name, root = data_dir.name, data_dir.parent
    if name in BUILT_IN:
        command = f"gpt2repro prepare {name}"
    else:
        command = f"gpt2repro prepare files --name {name}"
    if tokenizer != "gpt2":
        command += f" --tokenizer {tokenizer}"
    if root != Path("data"):  # the default --data-dir
        command += f" --data-dir {root}"
    return command if name in BUILT_IN else command + " PATHS..."


def _not_prepared(data_dir: Path) -> FileNotFoundError:
    if (data_dir / PROGRESS).is_file():
        return FileNotFoundError(
            f"{data_dir}: preparation was interrupted (no {MANIFEST}, but a {PROGRESS}). "
            f"Re-run the same `gpt2repro prepare ...` command to resume it."
        )
    return FileNotFoundError(
        f"{data_dir / MANIFEST}: no such file; {data_dir} is not a prepared dataset. "
        f"Create it with `{prepare_command(data_dir)}`."
    )


def redo_hint(data_dir: Path, manifest: dict[str, Any] | None = None) -> str:
    """How to re-create the dataset in `data_dir` from scratch, as a sentence."""
    settings = (manifest or {}).get("settings") or {}
    dataset = settings.get("dataset") or Path(data_dir).name
    identifier = settings.get("tokenizer", "gpt2")
    # dataset_dir appended the tokenizer's identifier to the name: --name is what came before.
    name = Path(data_dir).name.removesuffix(f"-{identifier}" if identifier != "gpt2" else "")
    command = f"gpt2repro prepare {dataset}"
    if dataset == "files":
        command += f" --name {name} PATHS..."
    if identifier != "gpt2":
        command += " --tokenizer TOKENIZER.json"
    return f"re-create the dataset with `{command} --data-dir {Path(data_dir).parent} --overwrite`."


def fix_hint(data_dir: Path, manifest: dict[str, Any] | None = None) -> str:
    """What to do about a dataset whose files disagree with each other, as a sentence."""
    return (
        f"Run `gpt2repro data verify {data_dir}` to see every problem, then "
        f"{redo_hint(data_dir, manifest)}"
    )


def read_manifest(data_dir: Path) -> dict[str, Any]:
    """Load and check `<data_dir>/manifest.json`; raise naming the file and the fix if it is bad."""
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not path.is_file():
        raise _not_prepared(data_dir)
    hint = redo_hint(data_dir)
    redo = hint[0].upper() + hint[1:]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}). {redo}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a gpt2repro dataset manifest. {redo}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path}: manifest format version {version}; this gpt2repro reads "
            f"{FORMAT_VERSION}. {redo}"
        )
    problems = []
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict) or not all(
        isinstance(tok.get(k), t)
        for k, t in (("identifier", str), ("spec", str), ("vocab_size", int), ("eot_id", int))
    ):
        problems.append("'tokenizer' needs identifier, spec, vocab_size and eot_id")
    splits = manifest.get("splits")
    if not isinstance(splits, dict):
        problems.append("'splits' is missing")
        splits = {}
    for split in SPLITS:
        info = splits.get(split)
        keys = ("documents", "tokens", "bytes")
        if not isinstance(info, dict) or not all(isinstance(info.get(k), int) for k in keys):
            problems.append(f"split {split!r} needs integer documents, tokens and bytes")
            continue
        shards = info.get("shards")
        if not isinstance(shards, list) or not all(
            isinstance(s, dict)
            and isinstance(s.get("file"), str)
            and isinstance(s.get("tokens"), int)
            for s in shards
        ):
            problems.append(f"split {split!r} needs a list of shards with file and tokens")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems) + f". {redo}")
    return manifest


def split_shards(manifest: dict[str, Any], data_dir: Path, split: str) -> list[Path]:
    """Paths of the shards of `split`, in order."""
    splits = manifest["splits"]
    if split not in splits:
        raise ValueError(
            f"{Path(data_dir) / MANIFEST}: no split {split!r}; the dataset has {', '.join(splits)}."
        )
    return [Path(data_dir) / s["file"] for s in splits[split]["shards"]]
