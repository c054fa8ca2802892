"""MetricsWriter.truncate_after: what a resumed run keeps of a killed run's metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

from gpt2repro.metrics import MetricsWriter


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_truncate_keeps_steps_up_to_the_checkpoint(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path / "metrics.jsonl", tmp_path / "samples.txt", None, None, config={})
    for step in range(1, 8):
        w.write({"step": step, "kind": "train", "loss": 1.0 / step})
    w.write({"step": 4, "kind": "val", "loss": 0.5})
    w.truncate_after(5)
    kept = records(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["kind"]) for r in kept] == [
        (1, "train"), (2, "train"), (3, "train"), (4, "train"), (5, "train"), (4, "val"),
    ]  # fmt: skip
    assert not list(tmp_path.glob("*.tmp"))


def test_truncate_drops_a_line_torn_by_a_kill(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    whole = [json.dumps({"step": s, "kind": "train", "loss": 2.0}) for s in (1, 2, 3)]
    torn = json.dumps({"step": 4, "kind": "train", "loss": 2.0})[:17]  # SIGKILL mid-write
    path.write_text("\n".join([*whole, torn]))
    w = MetricsWriter(tmp_path / "metrics.jsonl", tmp_path / "samples.txt", None, None, config={})
    w.truncate_after(3)
    w.write({"step": 4, "kind": "train", "loss": 1.5})  # the resumed run carries on
    assert [r["step"] for r in records(path)] == [1, 2, 3, 4]
    assert records(path)[-1]["loss"] == 1.5
