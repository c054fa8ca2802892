"""Files and directories that appear whole or not at all, and what a killed writer left of them.

A directory is replaced in two renames and a deletion (`atomic_directory`), each step
leaving its own name, so whatever moment a SIGKILL picks, the next start can tell what was
going on and finish or undo it (`recover_directories`). For a directory `<name>` in `<parent>`:

    .<name>.lock-<token>   the writer's record (host, boot, pid namespace, pid, start time):
                           written first, removed last
    .<name>.tmp-<token>    the new directory being filled; renamed to <name> when complete
    .<name>.old-<token>    the directory it replaces, set aside until the new one is in place
    .<name>.trash-<token>  a directory being deleted (`delete_directory`)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>lock|tmp|old|trash)-(?P<token>[^.]+)$")
"""A name `atomic_directory` gives its record and directories (tokens come from mkstemp:
letters, digits and underscores, never a dot)."""


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to fill; on success it replaces `path`.

    Files are fsynced before the rename, so a crash never leaves a directory at `path`
    that looks complete; on any error (or Ctrl-C) the temporary directory is removed. An
    existing `path` is renamed aside and deleted only after the new one is in: a SIGKILL at
    any moment leaves the old or the new directory, at `path` or aside, for
    `recover_directories` to put back.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _write_lock(path)
    tmp, old = _sibling(lock, "tmp"), _sibling(lock, "old")
    try:
        tmp.mkdir()
        yield tmp
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        _swap_in(tmp, path, old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        lock.unlink(missing_ok=True)
        raise
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    if not old.exists():  # else the next start's recover_directories finishes the deletion
        lock.unlink()


def delete_directory(path: Path) -> None:
    """Delete directory `path`, first renamed out of sight: a kill midway leaves no part of it
    under its name (where it would look like a damaged original), and `recover_directories`
    finishes the deletion."""
    lock = _write_lock(path)
    trash = _sibling(lock, "trash")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
    if not trash.exists():
        lock.unlink()


def _swap_in(tmp: Path, path: Path, old: Path) -> None:
    """Rename `path` (if any) to `old`, then `tmp` to `path`; on an error, `path` as it was."""
    replacing = path.exists()
    if replacing:
        os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if replacing:
            os.rename(old, path)
        raise
    _fsync_dir(path.parent)  # the renames themselves survive a power cut


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def _sibling(lock: Path, kind: str) -> Path:
    """The `kind` (tmp, old) directory that belongs to writer record `lock`."""
    m = LEFTOVER.match(lock.name)
    assert m is not None, f"{lock.name} is not a writer record's name"
    return lock.with_name(f".{m['name']}.{kind}-{m['token']}")


def _write_lock(path: Path) -> Path:
    """Create `.<name>.lock-<token>` next to `path`, holding this process's record."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.lock-", dir=path.parent)
    try:
        os.write(fd, json.dumps(process_record(os.getpid())).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return Path(name)


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None when no such process."""
    stat = _read(f"/proc/{pid}/stat")
    # Field 22; the second field (the command) may hold spaces and parentheses.
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


def process_record(pid: int) -> dict[str, Any]:
    """What identifies process `pid` of this machine, even once its pid is reused: host, boot,
    pid namespace (a container's pids are its own), pid and start time."""
    namespace = None
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    return {
        "host": socket.gethostname(),
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "pid_namespace": namespace,
        "pid": pid,
        "started": _start_time(pid),
    }


def writer_gone(record: dict[str, Any]) -> bool | None:
    """Whether the process of `record` has ended: True or False where this process can see it
    (same host, boot and pid namespace), None where it cannot (another machine or container)."""
    here = process_record(os.getpid())
    if None in (here["boot"], here["pid_namespace"], record.get("started")):
        return None  # no /proc: nothing to compare against
    if any(record.get(key) != here[key] for key in ("host", "boot", "pid_namespace")):
        return None
    return _start_time(int(record["pid"])) != record["started"]


def recover_directories(parent: Path) -> list[str]:
    """Finish what `atomic_directory` writers killed in `parent` left; returns what was done
    and what was left (with why), one sentence each.

    A writer that provably ended (`writer_gone`) has its new directory deleted, and the one it
    was replacing put back if it never got its replacement, else deleted. The leftovers of a
    live writer are its work in progress and stay; those of a writer this process cannot see
    (another machine, an older gpt2repro that kept no record) stay, with what to do.
    """
    if not parent.is_dir():
        return []
    found: dict[str, dict[str, Path]] = {}
    for p in parent.iterdir():
        m = LEFTOVER.match(p.name)
        if m and p.is_dir() == (m["kind"] != "lock"):
            found.setdefault(m["token"], {"name": parent / m["name"]})[m["kind"]] = p
    notes = []
    for parts in found.values():
        leftovers = [parts[kind] for kind in ("tmp", "old", "trash") if kind in parts]
        notes += _recover_one(parts["name"], parts.get("lock"), parts.get("old"), leftovers)
    return notes


def _writer_gone(lock: Path | None) -> bool | None:
    """`writer_gone` for the record in `lock`; None if there is none or it cannot be read."""
    try:
        record = json.loads(lock.read_text()) if lock is not None else None
        return writer_gone(record) if isinstance(record, dict) else None
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _recover_one(
    path: Path, lock: Path | None, old: Path | None, leftovers: list[Path]
) -> list[str]:
    """Recover `path` from one writer's `lock` and `leftovers` (`old`, if any, among them)."""
    gone = _writer_gone(lock)
    if gone is False:
        return []  # a live writer's work in progress
    if gone is None:
        if not leftovers:
            return []
        why = "it has no writer record" if lock is None else "its writer is not a process here"
        note = f"left {', '.join(map(str, leftovers))}: {why}, so it may still be in use."
        if old is not None and not path.exists():
            return [
                f"{note} {path} is missing: once no run writes to {path.parent}, "
                f"`mv {old} {path}` puts back the last complete one."
            ]
        return [f"{note} Delete it once no run writes to {path.parent}."]
    notes = []
    if old is not None and not path.exists():
        os.rename(old, path)  # killed between its two renames: the replaced one is complete
        notes.append(f"put back {path}, whose replacement was interrupted by a killed run")
    for p in leftovers:
        if p.exists():
            shutil.rmtree(p)
            notes.append(f"deleted {p}, left by a killed run")
    assert lock is not None, f"{path}: a provably ended writer needs a record"
    lock.unlink()
    return notes
