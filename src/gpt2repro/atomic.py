"""Files and directories that appear complete or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to fill; on success it replaces `path`.

    Files are fsynced before the rename, so a crash never leaves a directory at `path`
    that looks complete; on any error (or Ctrl-C) the temporary directory is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path, unique: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success it is fsynced and renamed over
    `path`, so readers (and a run killed mid-write) see the old file or the new one, never half
    of either. On any error the temporary file is removed and `path` is left as it was.

    The temporary name is fixed, so the next write reuses what a killed one left behind;
    `unique` adds the process and thread for files that several processes may write at once.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f"-{os.getpid()}-{threading.get_ident()}" if unique else ""
    tmp = path.with_name(f".{path.name}.tmp{suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str, unique: bool = False) -> None:
    """Replace `path` with `text` (UTF-8) in one rename; see `atomic_file`."""
    with atomic_file(path, unique) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` in one rename; see `atomic_file`."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)


def move_aside(path: Path, target: Path) -> Path:
    """Rename `path` to `target`, or to the first free `<target>.N` (N = 1, 2, ...) when
    `target` exists; returns the new name. Used to keep what a new run would overwrite."""
    free, n = target, 1
    while free.exists():
        free = target.with_name(f"{target.name}.{n}")
        n += 1
    free.parent.mkdir(parents=True, exist_ok=True)
    path.rename(free)
    return free
