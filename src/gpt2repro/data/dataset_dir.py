"""A prepared dataset's folder: what `prepare` owns in it, when it is complete, its lock.

`prepare` writes shards, a manifest and a progress file into one folder per dataset; these
functions decide whether a folder already holds the requested dataset, clear only what
`prepare` wrote (refusing a folder with anyone else's files), and serialise concurrent
prepares of the same folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gpt2repro.data import manifest as mf


def discard(out_dir: Path, existed: bool) -> None:
    """Remove what this prepare wrote, and the folder too if it made it and it is empty."""
    remove_dataset(out_dir)
    if not existed:
        (out_dir / ".prepare.lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # not empty: something else lives there
            out_dir.rmdir()


def is_complete(out_dir: Path, settings: dict[str, Any]) -> bool:
    """True if `out_dir` holds a finished dataset with `settings`; an error if other settings."""
    if not (out_dir / mf.MANIFEST).is_file():
        return False
    manifest = mf.read_manifest(out_dir)
    old = manifest.get("settings") or {}
    if old != settings:
        changed = sorted(k for k in settings if old.get(k) != settings[k])
        raise ValueError(
            f"{out_dir} already holds {settings['dataset']} prepared with other settings "
            f"(different: {', '.join(changed)}). Pass --overwrite to replace it, or "
            f"--data-dir / --name to prepare it somewhere else."
        )
    _check_inputs_unchanged(out_dir, manifest.get("source") or {})
    return True


def _check_inputs_unchanged(out_dir: Path, source: dict[str, Any]) -> None:
    """Same settings but an input file of another size: the shards hold stale text."""
    for path, size in zip(source.get("paths") or [], source.get("bytes") or [], strict=False):
        now = Path(path).stat().st_size if Path(path).is_file() else None
        if now != size:
            state = "is gone" if now is None else f"has {now:,} bytes, not {size:,}"
            raise ValueError(
                f"{out_dir} was prepared from {path}, which {state} now. Pass --overwrite to "
                f"prepare it again from the files as they are."
            )


@contextlib.contextmanager
def exclusive(out_dir: Path, progress: bool) -> Iterator[None]:
    """Hold `<out_dir>/.prepare.lock`, so concurrent prepares (e.g. from every DDP rank)
    of one dataset run one after the other instead of writing the same files at once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / ".prepare.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress:
                tqdm.write(f"Waiting for another `prepare` of {out_dir} to finish...")
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# What `prepare` writes in a dataset folder: shards (and the .tmp each is built in), the
# manifest, the progress file (and their atomic-write temporaries), the lock.
_OWN_FILE = re.compile(
    r"(?:train|val)_\d{6}\.bin(?:\.tmp)?|(?:manifest|progress)\.json"
    r"|\.(?:manifest|progress)\.json\.tmp.*|\.prepare\.lock"
)


def refuse_foreign_files(out_dir: Path) -> None:
    """A fresh start or --overwrite clears the dataset folder: never with someone else's files in it."""
    if not out_dir.is_dir():
        return
    foreign = sorted(p.name for p in out_dir.iterdir() if not _OWN_FILE.fullmatch(p.name))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise FileExistsError(
            f"{out_dir} already holds files that `prepare` did not write ({shown}). Prepare "
            f"under another --name or --data-dir, or move those files elsewhere first."
        )


def remove_dataset(out_dir: Path) -> None:
    """Delete what `prepare` writes in `out_dir` (and nothing else)."""
    if not out_dir.is_dir():
        return
    for path in out_dir.iterdir():
        if _OWN_FILE.fullmatch(path.name) and path.name != ".prepare.lock":
            path.unlink()
