"""Documents -> per-split shards, with a checkpoint at every finished shard so a killed run resumes.

Every split streams into its current shard's `.tmp` file. When a shard fills up, the
writer (1) writes that shard's header and syncs every open `.tmp`, (2) atomically replaces
`progress.json` with the resume point (the document being written, how many of its tokens
are already in shards, each split's counters and `.tmp` length), and only then (3) renames
the shard into place. A restart truncates each `.tmp` back to its recorded length, skips
the recorded number of documents and tokens, and continues: the result is byte-for-byte
what an uninterrupted run writes. Finished shards are never rewritten.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import gpt2repro
from gpt2repro.data import manifest as mf
from gpt2repro.data.manifest import PROGRESS, SPLITS, write_json_atomic
from gpt2repro.data.shards import (
    ShardBuilder,
    ShardFormatError,
    commit,
    read_header,
    shard_name,
    tmp_path,
)

PROGRESS_VERSION = 1
_REDO = "Pass --overwrite (overwrite=True) to start this dataset over."


@dataclass
class SplitState:
    """Counters of one split; checkpointed in progress.json."""

    shards: list[dict[str, Any]] = field(default_factory=list)
    """finished shards: file, tokens, crc32"""
    tmp_tokens: int = 0
    """tokens in the current shard's .tmp at the checkpoint"""
    documents: int = 0
    """documents started in this split"""
    tokens: int = 0
    """tokens written, the .tmp included"""
    bytes: int = 0
    """UTF-8 bytes of those documents"""


@dataclass(frozen=True)
class TokenizerInfo:
    """What the shard headers and the manifest record about the tokenizer."""

    identifier: str
    spec: str
    vocab_size: int
    eot_id: int


def _changed(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the entries that differ between two nested dicts."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [prefix.rstrip(".") or "everything"] if old != new else []
    keys = sorted(set(old) | set(new))
    return [c for k in keys for c in _changed(old.get(k), new.get(k), f"{prefix}{k}.")]


class DatasetWriter:
    """Appends documents, in source order, to the shards of `out_dir`; see the module docstring."""

    def __init__(
        self,
        out_dir: Path,
        config: dict[str, Any],
        tok: TokenizerInfo,
        shard_tokens: int,
        dtype: np.dtype,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.config = config
        self.tok = tok
        self.shard_tokens = shard_tokens
        self.dtype = np.dtype(dtype)
        self.states = {split: SplitState() for split in SPLITS}
        # Resume point: document `next_doc` has its first `doc_offset` tokens in `doc_split`.
        self.next_doc = 0
        self.doc_offset = 0
        self.doc_split: str | None = None
        self.complete = False
        self.out_dir.mkdir(parents=True, exist_ok=True)
        progress = self.out_dir / PROGRESS
        if progress.is_file():
            self._load(progress)
        else:
            self._clean()
        self.builders: dict[str, ShardBuilder] = {}
        for split, state in self.states.items():
            if self.complete:
                break
            path = self._path(split, len(state.shards))
            try:
                self.builders[split] = ShardBuilder(
                    path, self.dtype, shard_tokens, state.tmp_tokens
                )
            except ValueError as e:
                self.close()
                raise ValueError(f"Cannot resume: {e} {_REDO}") from e

    def _path(self, split: str, index: int) -> Path:
        return self.out_dir / shard_name(split, index)

    def _clean(self) -> None:
        """A fresh start: remove shards and temporaries that no checkpoint accounts for."""
        for pattern in ("*.bin", "*.bin.tmp", "*.json.tmp"):
            for path in self.out_dir.glob(pattern):
                path.unlink()

    def _load(self, path: Path) -> None:
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("version") != PROGRESS_VERSION:
                raise ValueError(f"progress format {saved.get('version')}")
            if saved["config"] != self.config:
                changed = _changed(saved["config"], self.config)
                raise ValueError(
                    f"{self.out_dir} holds an interrupted preparation with other settings "
                    f"(different: {', '.join(changed) or 'format'}). Re-run it with the same "
                    f"settings to resume it, or start over. {_REDO}"
                )
            self.states = {s: SplitState(**saved["splits"][s]) for s in SPLITS}
            self.next_doc = int(saved["next_doc"])
            self.doc_offset = int(saved["doc_offset"])
            self.doc_split = saved["doc_split"]
            self.complete = bool(saved["complete"])
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: unreadable checkpoint ({e}). {_REDO}") from e
        for split, state in self.states.items():
            for index, entry in enumerate(state.shards):
                self._recover_shard(self._path(split, index), entry)
            # Shards past the checkpoint cannot exist (they are renamed only after it).
            for stale in self.out_dir.glob(f"{split}_*.bin"):
                if stale.name not in {entry["file"] for entry in state.shards}:
                    stale.unlink()

    def _recover_shard(self, path: Path, entry: dict[str, Any]) -> None:
        """A checkpointed shard exists, or its finished .tmp still awaits the rename."""
        source = path if path.is_file() else tmp_path(path)
        try:
            header = read_header(source)
        except (ShardFormatError, FileNotFoundError) as e:
            raise ValueError(f"Cannot resume: {e}. {_REDO}") from e
        if header.count != entry["tokens"] or header.crc32 != entry["crc32"]:
            raise ValueError(f"Cannot resume: {source} does not match {PROGRESS}. {_REDO}")
        if source != path:
            commit(path)

    def resumed_split(self, doc_index: int) -> str | None:
        """The split of `doc_index` if it was started before the restart, else None."""
        return self.doc_split if doc_index == self.next_doc and self.doc_offset else None

    def add(self, doc_index: int, split: str, tokens: np.ndarray, nbytes: int) -> None:
        """Append document `doc_index` (tokens = [eot] + its ids) to `split`."""
        start = 0
        if doc_index == self.next_doc and self.doc_offset:
            assert split == self.doc_split, (split, self.doc_split)
            start = self.doc_offset  # counted, and this many tokens written, before the restart
        else:
            self.states[split].documents += 1
            self.states[split].bytes += nbytes
        while start < len(tokens):
            taken = self.builders[split].append(tokens[start:])
            start += taken
            self.states[split].tokens += taken
            if self.builders[split].free == 0:
                self._finish_shard(split, doc_index, start)

    def _finish_shard(self, split: str, doc_index: int, doc_offset: int) -> None:
        builder = self.builders[split]
        header = builder.finish(self.tok.vocab_size, self.tok.eot_id, self.tok.identifier)
        state = self.states[split]
        state.shards.append(
            {"file": builder.path.name, "tokens": header.count, "crc32": header.crc32}
        )
        for other, b in self.builders.items():
            if other != split:
                b.sync()
        self.next_doc, self.doc_offset, self.doc_split = doc_index, doc_offset, split
        self._checkpoint(frozenset([split]))
        commit(builder.path)
        self.builders[split] = ShardBuilder(
            self._path(split, len(state.shards)), self.dtype, self.shard_tokens
        )

    def _checkpoint(self, finished: frozenset[str] = frozenset()) -> None:
        """Record the resume point; the shards of `finished` splits are done, their .tmp empty."""
        for split, state in self.states.items():
            builder = self.builders.get(split)
            state.tmp_tokens = 0 if builder is None or split in finished else builder.count
        progress = {
            "version": PROGRESS_VERSION,
            "config": self.config,
            "next_doc": self.next_doc,
            "doc_offset": self.doc_offset,
            "doc_split": self.doc_split,
            "complete": self.complete,
            "splits": {split: asdict(state) for split, state in self.states.items()},
        }
        write_json_atomic(self.out_dir / PROGRESS, progress)

    def finish(self) -> dict[str, dict[str, Any]]:
        """Finish the last shard of each split; return per-split counters and shard lists."""
        if not self.complete:
            finished = []
            for split, builder in self.builders.items():
                if builder.count:
                    header = builder.finish(
                        self.tok.vocab_size, self.tok.eot_id, self.tok.identifier
                    )
                    entry = {
                        "file": builder.path.name,
                        "tokens": header.count,
                        "crc32": header.crc32,
                    }
                    self.states[split].shards.append(entry)
                    finished.append(builder.path)
                else:
                    builder.close()
                    tmp_path(builder.path).unlink()
            self.complete = True
            self._checkpoint(frozenset(self.builders))
            for path in finished:
                commit(path)
        return {
            split: {
                "documents": s.documents,
                "tokens": s.tokens,
                "bytes": s.bytes,
                "shards": s.shards,
            }
            for split, s in self.states.items()
        }

    def publish(self, splits: dict[str, Any]) -> None:
        """Write the manifest, which marks the dataset complete, then drop the progress file.

        `splits` is what `finish` returned; source and settings are the config's, the same
        that a resumed run had to match.
        """
        manifest = {
            "format": mf.FORMAT,
            "format_version": mf.FORMAT_VERSION,
            "name": self.out_dir.name,
            "source": self.config["source"],
            "tokenizer": asdict(self.tok),
            "vocab_size": self.tok.vocab_size,
            "dtype": self.dtype.name,
            "settings": self.config["settings"],
            "splits": splits,
            "gpt2repro_version": gpt2repro.__version__,
        }
        # Through the module, so a test can fail this write alone (crash-resume test).
        mf.write_json_atomic(self.out_dir / mf.MANIFEST, manifest)
        (self.out_dir / PROGRESS).unlink()

    def close(self) -> None:
        """Close open files without finishing (after an error; the checkpoint stays valid)."""
        for builder in getattr(self, "builders", {}).values():
            builder.close()
