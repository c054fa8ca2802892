"""Checkpoint directories: bit-exact round trip, atomic writes, version checks, exact resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from gpt2repro.checkpoint import is_checkpoint, load_model, restore_weights, save_checkpoint
from gpt2repro.distributed import DistInfo
from gpt2repro.model import GPT
from gpt2repro.run_dir import RunDir, fallback_advice
from gpt2repro.tokenizer import GPT2Tokenizer
from gpt2repro.train_state import (
    load_train_state,
    restore_train_checkpoint,
    rng_state,
    save_train_checkpoint,
    set_rng_state,
)


def test_round_trip_is_bit_exact(tiny_model: GPT, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", tiny_model, GPT2Tokenizer(), meta={"step": 7})
    model, tok, meta = load_model(path)
    assert meta["step"] == 7 and tok.identifier == "gpt2"
    assert model.config == tiny_model.config
    ref = tiny_model.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, ref[key]), key
    assert model.lm_head.weight is model.transformer.wte.weight


def test_compiled_model_saves_plain_names(tiny_model: GPT, tmp_path: Path) -> None:
    wrapped = torch.compile(tiny_model)  # only wraps; nothing compiles until called
    path = save_checkpoint(tmp_path / "ck", wrapped, GPT2Tokenizer())
    model, _, _ = load_model(path)
    assert torch.equal(model.transformer.wte.weight, tiny_model.transformer.wte.weight)


def test_interrupted_write_leaves_no_checkpoint(tiny_model: GPT, tmp_path: Path) -> None:
    def crash(_: Path) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", tiny_model, GPT2Tokenizer(), extra_files={"x": crash})
    assert not (tmp_path / "ck").exists()
    assert list(tmp_path.iterdir()) == []


def test_wrong_version_and_not_a_checkpoint(tiny_model: GPT, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", tiny_model, GPT2Tokenizer())
    assert is_checkpoint(path)
    meta = json.loads((path / "meta.json").read_text())
    (path / "meta.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(ValueError, match="format version 99"):
        load_model(path)
    with pytest.raises(ValueError, match="not a gpt2repro checkpoint"):
        load_model(tmp_path)


def test_damaged_meta_names_the_file(tiny_model: GPT, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", tiny_model, GPT2Tokenizer())
    (path / "meta.json").write_text('{"format_version": 1, "mod')  # cut short by a full disk
    with pytest.raises(ValueError) as err:
        load_model(path)
    msg = str(err.value)
    assert str(path / "meta.json") in msg and "damaged" in msg and "another checkpoint" in msg


def _fake_step_checkpoint(root: Path, step: int) -> Path:
    path = root / f"step_{step:06d}"
    path.mkdir(parents=True)
    for name in ("meta.json", "model.safetensors", "train_state.pt"):
        (path / name).write_text("{}")
    return path


@pytest.mark.parametrize("keep_last", [1, 2, 3])
def test_prune_keeps_the_checkpoint_just_written(tmp_path: Path, keep_last: int) -> None:
    # A run resumed from step 10 of a folder that also holds steps 20 and 30 of an older
    # attempt, now writing step 15: sorting the folder by name would delete step 15.
    run = RunDir(tmp_path)
    for step in (5, 10, 20, 30):
        _fake_step_checkpoint(run.checkpoints, step)
    newest = _fake_step_checkpoint(run.checkpoints, 15)
    run.prune(keep_last, newest)
    kept = sorted(int(p.name[5:]) for p in run.checkpoints.glob("step_*"))
    expected = {1: [15, 20, 30], 2: [10, 15, 20, 30], 3: [5, 10, 15, 20, 30]}[keep_last]
    assert kept == expected


def _step(model: GPT, optimizer: torch.optim.Optimizer) -> None:
    x = torch.randint(0, model.config.vocab_size, (2, 16))
    model(x, x).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_train_checkpoint_resumes_exactly(tiny_model: GPT, tmp_path: Path) -> None:
    """Weights, AdamW moments and RNGs come back; the next step then matches the original's."""
    tiny_model.train()
    optimizer = torch.optim.AdamW(tiny_model.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _step(tiny_model, optimizer)
    path = save_train_checkpoint(
        tmp_path / "ck", tiny_model, GPT2Tokenizer(), optimizer, scaler, {"step": 1}
    )
    assert "rng_per_rank" not in load_train_state(path)  # one process: one RNG state
    torch.manual_seed(123)
    model = GPT(tiny_model.config)
    restored = torch.optim.AdamW(model.parameters(), lr=1e-2)
    meta = restore_train_checkpoint(path, model, restored, scaler)
    assert meta["step"] == 1
    assert model.lm_head.weight is model.transformer.wte.weight
    _step(tiny_model, optimizer)  # the original goes on from the saved RNG state...
    set_rng_state(load_train_state(path)["rng"])
    _step(model, restored)  # ...and so does the restored copy
    for (name, a), b in zip(
        tiny_model.state_dict().items(), model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_a_rank_the_saving_run_did_not_have_draws_its_own_stream(
    tiny_model: GPT, tmp_path: Path
) -> None:
    """A one-process checkpoint resumed on two ranks: rank 0 continues the saved generator,
    rank 1 gets a different (but reproducible) one, not a copy of rank 0's dropout masks."""
    optimizer = torch.optim.AdamW(tiny_model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = save_train_checkpoint(
        tmp_path / "ck", tiny_model, GPT2Tokenizer(), optimizer, scaler, {"step": 0}
    )
    draws = {}
    for rank in (0, 1, 1):
        model = GPT(tiny_model.config)
        opt = torch.optim.AdamW(model.parameters())
        restore_train_checkpoint(path, model, opt, scaler, DistInfo(rank=rank, world_size=2))
        draw = torch.rand(4)
        assert torch.equal(draws.setdefault(rank, draw), draw)  # the same on every attempt
    set_rng_state(load_train_state(path)["rng"])
    assert torch.equal(draws[0], torch.rand(4))
    assert not torch.equal(draws[0], draws[1])


def test_resume_refuses_a_different_model(tiny_model: GPT, tmp_path: Path) -> None:
    optimizer = torch.optim.AdamW(tiny_model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = save_train_checkpoint(
        tmp_path / "ck", tiny_model, GPT2Tokenizer(), optimizer, scaler, {"step": 0}
    )
    wider = GPT(replace(tiny_model.config, n_embd=64))
    with pytest.raises(ValueError, match="n_embd 32 -> 64"):
        restore_weights(path, wider)


def test_resume_keeps_this_runs_peaks_and_refuses_another_optimizer(
    tiny_model: GPT, tmp_path: Path
) -> None:
    """The schedule is the run's config (a resume may change --optim.lr); the moments are
    the checkpoint's. An optimizer with other groups is refused, naming the file."""
    optimizer = torch.optim.AdamW([{"params": list(tiny_model.parameters()), "peak_lr": 1e-3}])
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    _step(tiny_model, optimizer)
    path = save_train_checkpoint(
        tmp_path / "ck", tiny_model, GPT2Tokenizer(), optimizer, scaler, {"step": 1}
    )
    model = GPT(tiny_model.config)
    restored = torch.optim.AdamW([{"params": list(model.parameters()), "peak_lr": 5e-3}])
    restore_train_checkpoint(path, model, restored, scaler)
    assert restored.param_groups[0]["peak_lr"] == 5e-3
    assert torch.equal(
        restored.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )
    split = torch.optim.AdamW([{"params": [p]} for p in model.parameters()])
    with pytest.raises(ValueError, match=r"train_state.pt: optimizer state for parameter groups"):
        restore_train_checkpoint(path, model, split, scaler)


class FakeCuda:
    """torch.cuda's RNG calls on a machine with `n` GPUs, this process on GPU `current`."""

    def __init__(self, n: int, current: int) -> None:
        self.n, self.current = n, current
        self.set: list[torch.Tensor] = []

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: torch.full((4,), self.current))
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set.append)


def test_cuda_rng_is_this_gpus_and_resumes_on_fewer_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    # Rank 3 of an 8-GPU node saves its own GPU's generator, not all eight.
    eight = FakeCuda(8, current=3)
    eight.install(monkeypatch)
    saved = rng_state()
    assert torch.equal(saved["cuda"], torch.full((4,), 3))
    # Resumed on a one-GPU machine, the generator goes to the one GPU there.
    one = FakeCuda(1, current=0)
    one.install(monkeypatch)
    set_rng_state(saved)
    assert len(one.set) == 1 and torch.equal(one.set[0], torch.full((4,), 3))


def test_fallback_advice_names_the_next_older_step(tmp_path: Path) -> None:
    for step in (3, 6):
        _fake_step_checkpoint(tmp_path, step)
    newest = _fake_step_checkpoint(tmp_path, 9)
    assert f"--checkpoint.resume {tmp_path / 'step_000006'}," in fallback_advice(newest)
    assert "no older step checkpoint" in fallback_advice(tmp_path / "step_000003")
    assert "Pass another checkpoint" in fallback_advice(tmp_path / "best")


def test_truncated_train_state_names_the_file(tiny_model: GPT, tmp_path: Path) -> None:
    opt = torch.optim.AdamW(tiny_model.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    path = save_train_checkpoint(tmp_path / "ck", tiny_model, GPT2Tokenizer(), opt, scaler, {})
    file = path / "train_state.pt"
    load_train_state(path)  # intact: loads
    for size in (file.stat().st_size // 2, 0):
        file.write_bytes(file.read_bytes()[:size])
        with pytest.raises(ValueError, match=rf"^{file}: corrupt or incomplete"):
            load_train_state(path)
