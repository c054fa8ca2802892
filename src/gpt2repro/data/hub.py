"""Online datasets: tiny Shakespeare from GitHub and corpora streamed from the Hugging Face hub.

Every online source first checks, within seconds, that its host answers; offline it fails
at once with a message naming the local-files alternative, instead of letting a client
retry for minutes. `datasets` is imported only here, only when needed.
"""

from __future__ import annotations

import hashlib
import os
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2repro import assets
from gpt2repro.atomic import write_bytes_atomic
from gpt2repro.data.sources import DEFAULT_VAL_FRACTION, Document, Source, tiny_shakespeare

TINY_SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
# nanoGPT's shakespeare_char/prepare.py reports 1,115,394 characters; the file is ASCII.
TINY_SHAKESPEARE_BYTES = 1_115_394
# Seconds to wait for a host before declaring ourselves offline.
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HubDataset:
    """A text corpus on the Hugging Face hub, read with `datasets` in streaming mode."""

    repo: str
    """dataset repository id"""
    config: str | None
    """configuration (subset) name, if any"""
    splits: tuple[tuple[str, str | None], ...]
    """(hub split, our split); our split None means split by document hash"""
    text_field: str = "text"
    """column holding the document text"""


HUB_DATASETS = {
    "tinystories": HubDataset(
        "roneneldan/TinyStories", None, (("train", "train"), ("validation", "val"))
    ),
    "openwebtext": HubDataset("Skylion007/openwebtext", None, (("train", None),)),
    "fineweb-edu": HubDataset("HuggingFaceFW/fineweb-edu", "sample-10BT", (("train", None),)),
    "fineweb": HubDataset("HuggingFaceFW/fineweb", "sample-10BT", (("train", None),)),
}


class SourceUnreachable(ConnectionError):
    """A dataset's online source cannot be read here: `problem` says why, the message adds
    what to do instead (callers that know more, e.g. the run's tokenizer, replace that)."""

    def __init__(self, problem: str, advice: str) -> None:
        super().__init__(f"{problem} {advice}")
        self.problem = problem


def offline_hint(name: str, tokenizer: str = "gpt2", data_root: Path | None = None) -> str:
    """How to prepare `name` from local copies of its files, tokenized with `tokenizer`
    (into `data_root`, when the command must name one)."""
    with_tok = "" if tokenizer == "gpt2" else f" --tokenizer {tokenizer}"
    if data_root is not None and Path(data_root) != Path("data"):
        with_tok += f" --data-dir {data_root}"
    if name == "tinyshakespeare":
        return (
            f"Or download input.txt yourself and run "
            f"`gpt2repro prepare tinyshakespeare PATH{with_tok}`."
        )
    hint = (
        f"To prepare {name} without network access, download its files (.parquet, .jsonl or "
        f".txt) on a connected machine, copy them here and run "
        f"`gpt2repro prepare files --name {name}{with_tok} PATHS...` (add --field COLUMN if "
        f"the text column is not 'text'"
    )
    if name == "tinystories":  # its .txt files hold many stories each
        return hint + "; for its .txt files add --txt-separator '<|endoftext|>')."
    return hint + ")."


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def check_reachable(url: str, name: str) -> None:
    """Raise ConnectionError within ~CONNECT_TIMEOUT_S unless `url`'s host answers HTTP."""
    outcome: list[BaseException | None] = []

    def probe() -> None:
        try:
            request = urllib.request.Request(url, method="HEAD")
            urllib.request.urlopen(request, timeout=CONNECT_TIMEOUT_S).close()
            outcome.append(None)
        except urllib.error.HTTPError:
            outcome.append(None)  # the host answered; access rules are the client's business
        except (OSError, ValueError) as e:
            outcome.append(e)

    # A thread with a deadline, because name resolution ignores socket timeouts.
    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S + 1)
    reason = outcome[0] if outcome else TimeoutError(f"no answer in {CONNECT_TIMEOUT_S:.0f} s")
    if reason is not None:
        raise SourceUnreachable(f"Cannot reach {url} ({reason}).", offline_hint(name))


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_source(name: str) -> Source:
    """A streaming source for one of `HUB_DATASETS`; fails fast when offline."""
    spec = HUB_DATASETS[name]
    if _env_flag("HF_HUB_OFFLINE") or _env_flag("HF_DATASETS_OFFLINE"):
        raise SourceUnreachable(
            f"{name} streams from the Hugging Face hub ({spec.repo}), but HF_HUB_OFFLINE or "
            f"HF_DATASETS_OFFLINE is set.",
            offline_hint(name),
        )
    check_reachable(f"{_hub_endpoint()}/api/datasets/{spec.repo}", name)
    try:
        import datasets
    except ImportError as e:
        raise ValueError(
            f"{name} is read with Hugging Face `datasets`: `pip install datasets`. "
            f"{offline_hint(name)}"
        ) from e

    def open_split(split: str) -> Any:
        return datasets.load_dataset(spec.repo, name=spec.config, split=split, streaming=True)

    def documents() -> Iterator[Document]:
        for hub_split, our_split in spec.splits:
            yield from hub_documents(open_split(hub_split), hub_split, our_split, spec.text_field)

    total: int | None = 0
    try:
        for hub_split, _ in spec.splits:
            n = open_split(hub_split).info.splits[hub_split].num_examples
            total = total + n if total is not None and n else None
    except Exception:  # the count only feeds the ETA; any metadata gap just hides it
        total = None
    description = {
        "dataset": name,
        "hub_repo": spec.repo,
        "hub_config": spec.config,
        "hub_splits": [s for s, _ in spec.splits],
        "field": spec.text_field,
    }
    has_own_val = any(ours == "val" for _, ours in spec.splits)
    val = None if has_own_val else DEFAULT_VAL_FRACTION[name]
    return Source(name, description, documents, val, total)


def hub_documents(
    rows: Any, hub_split: str, our_split: str | None, text_field: str
) -> Iterator[Document]:
    """Documents from an iterable of dict rows: the key is the row's `id`, else its index."""
    for index, row in enumerate(rows):
        text = row.get(text_field)
        if not isinstance(text, str):
            raise ValueError(
                f"row {index} of split {hub_split!r} has no string field {text_field!r} "
                f"(found: {', '.join(row)})."
            )
        if text:
            key = str(row["id"]) if row.get("id") is not None else f"{hub_split}#{index}"
            yield Document(key, text, our_split)


def tiny_shakespeare_file() -> Path:
    """The cached char-rnn `input.txt`, downloaded on first use (size-checked)."""
    target = assets.cache_dir() / "datasets" / "tinyshakespeare" / "input.txt"
    if target.is_file() and target.stat().st_size == TINY_SHAKESPEARE_BYTES:
        return target
    local = offline_hint("tinyshakespeare")
    try:
        with urllib.request.urlopen(TINY_SHAKESPEARE_URL, timeout=CONNECT_TIMEOUT_S) as r:
            data = r.read()
    except (OSError, ValueError) as e:
        raise SourceUnreachable(f"Cannot download {TINY_SHAKESPEARE_URL} ({e}).", local) from e
    if len(data) != TINY_SHAKESPEARE_BYTES:
        raise ValueError(
            f"{TINY_SHAKESPEARE_URL} served {len(data)} bytes, not the expected "
            f"{TINY_SHAKESPEARE_BYTES} (sha256 {hashlib.sha256(data).hexdigest()}). {local}"
        )
    write_bytes_atomic(target, data)
    return target


def tiny_shakespeare_source(local: Path | None) -> Source:
    """tinyshakespeare from `local` when given (`prepare.check_request` saw that it exists),
    else from the download cache."""
    return tiny_shakespeare(local if local is not None else tiny_shakespeare_file())
