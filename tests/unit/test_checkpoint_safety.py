"""What a checkpoint write leaves when its writer dies, and what loading one refuses: leftovers
of a dead writer are cleaned, a live or unknown writer's kept; a poisoned training state is
refused as such, and nothing in it runs; samples.txt is trimmed like metrics.jsonl."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gpt2repro.atomic import atomic_directory, process_record, recover_directories
from gpt2repro.checkpoint import DamagedCheckpoint
from gpt2repro.metrics import MetricsWriter
from gpt2repro.model import GPT
from gpt2repro.tokenizer import GPT2Tokenizer
from gpt2repro.train_state import check_files, load_train_state, save_train_checkpoint


def train_checkpoint(model: GPT, path: Path) -> Path:
    optimizer = torch.optim.AdamW(model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return save_train_checkpoint(path, model, GPT2Tokenizer(), optimizer, scaler, {"step": 3})


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_replacing_a_directory_leaves_only_the_new_one(tmp_path: Path) -> None:
    target = tmp_path / "best"
    for version in ("old", "new"):
        with atomic_directory(target) as tmp:
            (tmp / "meta.json").write_text(version)
    assert (target / "meta.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no record, no temporary, no old


def test_a_failed_replacement_keeps_the_old_directory(tmp_path: Path) -> None:
    target = tmp_path / "best"
    with atomic_directory(target) as tmp:
        (tmp / "meta.json").write_text("old")
    with pytest.raises(OSError, match="disk full"), atomic_directory(target) as tmp:
        raise OSError("disk full")
    assert (target / "meta.json").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def leftover(root: Path, name: str, token: str, record: dict[str, object] | None) -> Path:
    """What a writer of `root/name` killed mid-write leaves: its record and temporary."""
    tmp = root / f".{name}.tmp-{token}"
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(b"\0" * 100)
    if record is not None:
        (root / f".{name}.lock-{token}").write_text(json.dumps(record))
    return tmp


def test_only_a_provably_dead_writers_leftovers_are_deleted(tmp_path: Path) -> None:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 10  # its record needs its start time in /proc
        while process_record(sleeper.pid)["started"] is None and time.monotonic() < deadline:
            time.sleep(0.01)
        live = leftover(tmp_path, "step_000006", "live", process_record(sleeper.pid))
        remote = leftover(
            tmp_path, "step_000009", "remote", {**process_record(os.getpid()), "host": "elsewhere"}
        )
        unrecorded = leftover(tmp_path, "step_000012", "abcd1234", None)  # an older gpt2repro's
        notes = recover_directories(tmp_path)
        assert live.is_dir() and remote.is_dir() and unrecorded.is_dir()
        assert len(notes) == 2, notes  # a live writer is at work: no note
        assert any(str(remote) in n and "not a process here" in n for n in notes), notes
        assert any(str(unrecorded) in n and "no writer record" in n for n in notes), notes
        assert all("Delete it once no run writes to" in n for n in notes), notes
    finally:
        sleeper.kill()
        sleeper.wait()
    notes = recover_directories(tmp_path)  # now the sleeper is gone: its leftovers go too
    assert not live.exists() and not (tmp_path / ".step_000006.lock-live").exists()
    assert f"deleted {live}, left by a killed run" in notes
    assert remote.is_dir() and unrecorded.is_dir()


def test_a_reused_pid_does_not_keep_a_dead_writers_leftovers(tmp_path: Path) -> None:
    # In a restarted container the new run often gets the killed run's pid: the start time differs.
    record = {**process_record(os.getpid()), "started": "1"}
    tmp = leftover(tmp_path, "step_000003", "mine", record)
    recover_directories(tmp_path)
    assert not tmp.exists() and hidden(tmp_path) == []


def poisoned_state(file: Path, marker: Path) -> None:
    """Replace `file` with a pickle that, if unpickled unsafely, runs a shell command."""

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    torch.save({"optimizer": Payload(), "scaler": {}, "rng": {}}, file)


def test_a_poisoned_train_state_is_refused_as_unsafe_and_never_run(
    tiny_model: GPT, tmp_path: Path
) -> None:
    path = train_checkpoint(tiny_model, tmp_path / "ck")
    marker = tmp_path / "code-ran"
    poisoned_state(path / "train_state.pt", marker)
    for check in (load_train_state, check_files):
        with pytest.raises(DamagedCheckpoint) as err:
            check(path)
        msg = str(err.value)
        assert msg.startswith(f"{path / 'train_state.pt'}: refused for safety")
        assert "`posix.system`" in msg and "Nothing in it was run" in msg
        assert "Use another checkpoint" in msg and "\n" not in msg
        # Never torch's advice: weights_only=False would run the payload.
        assert "weights_only" not in msg and "likely succeed" not in msg
        assert "corrupt" not in msg and "full disk" not in msg
    assert not marker.exists()


@pytest.mark.parametrize(
    "file, size", [("model.safetensors", 0.5), ("train_state.pt", 0.5), ("train_state.pt", 0)]
)
def test_check_files_finds_a_cut_short_file(
    tiny_model: GPT, tmp_path: Path, file: str, size: float
) -> None:
    path = train_checkpoint(tiny_model, tmp_path / "ck")
    check_files(path)  # intact: passes
    damaged = path / file
    damaged.write_bytes(damaged.read_bytes()[: int(damaged.stat().st_size * size)])
    with pytest.raises(DamagedCheckpoint, match=rf"^{damaged}: corrupt or incomplete"):
        check_files(path)


def test_truncate_after_trims_samples_like_metrics(tmp_path: Path) -> None:
    w = MetricsWriter(tmp_path / "metrics.jsonl", tmp_path / "samples.txt", None, None, config={})
    for step in (2, 4, 6):
        w.write_samples(step, [f"a sample at {step}", "=== step 99 === is not a header here"])
    with open(tmp_path / "samples.txt", "a") as f:
        f.write("=== step 8 ===\nthe king spe")  # torn by a kill
    w.truncate_after(5)
    text = (tmp_path / "samples.txt").read_text()
    assert text.count("=== step 2 ===\n") == text.count("=== step 4 ===\n") == 2
    assert "step 6" not in text and "step 8" not in text and text.endswith("here\n")
    w.write_samples(6, ["again"])
    assert (tmp_path / "samples.txt").read_text() == text + "=== step 6 ===\nagain\n"
