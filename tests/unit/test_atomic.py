"""atomic_file and its writers: a reader sees the old file or the new one, never a part."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpt2repro.atomic import atomic_file, move_aside, write_bytes_atomic, write_text_atomic


def test_writers_replace_the_file_and_leave_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "results.json"
    write_text_atomic(target, "old\n")
    write_text_atomic(target, "new ✓\n")
    assert target.read_text(encoding="utf-8") == "new ✓\n"
    write_bytes_atomic(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]


def test_an_error_mid_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "tokenizer.json"
    target.write_text("complete")
    with pytest.raises(RuntimeError, match="disk full"), atomic_file(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "complete"
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]


def test_the_new_file_appears_only_at_the_rename(tmp_path: Path) -> None:
    target = tmp_path / "input.txt"
    with atomic_file(target) as tmp:
        tmp.write_text("all of it")
        assert not target.exists() and tmp.parent == tmp_path and tmp.name.startswith(".")
    assert target.read_text() == "all of it" and not tmp.exists()


def test_a_killed_writers_temporary_is_reused_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "progress.json"
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    (tmp_path / ".progress.json.tmp").write_text("left by a SIGKILL")  # no cleanup ran
    write_text_atomic(target, "{}")
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]


def test_unique_temporaries_name_the_writer(tmp_path: Path) -> None:
    target = tmp_path / "eval_results.json"
    with atomic_file(target, unique=True) as tmp:
        assert tmp.name.startswith(f".eval_results.json.tmp-{os.getpid()}-")
        tmp.write_text("x")
    assert target.read_text() == "x"


def test_move_aside_takes_the_first_free_name(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"run{i}").mkdir()
        (tmp_path / f"run{i}" / "mark").write_text(str(i))
    target = tmp_path / "kept" / "run"
    moved = [move_aside(tmp_path / f"run{i}", target) for i in range(3)]
    assert moved == [target, target.with_name("run.1"), target.with_name("run.2")]
    assert [(p / "mark").read_text() for p in moved] == ["0", "1", "2"]
    # A path moved aside under its own name gets the first free number.
    (tmp_path / "out").mkdir()
    assert move_aside(tmp_path / "out", tmp_path / "out") == tmp_path / "out.1"
