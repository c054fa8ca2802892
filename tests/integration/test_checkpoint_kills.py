"""Checkpoints against real SIGKILLs and bad inputs, end to end.

A training run in a child process is paused at a named moment of a checkpoint write (a
wrapped `torch.save`, `os.rename`, `shutil.rmtree` or `os.unlink` that waits once it has
done its work), killed with SIGKILL, and resumed: leftovers are cleaned, `best/` is always
whole, samples and TensorBoard hold each step once. Damaged, poisoned or diverged
checkpoints fail before anything is built, with a message that says what to do.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import cli_args, launch, train_config, wait_for
from safetensors.torch import load_file, save_file

from gpt2repro.atomic import recover_directories
from gpt2repro.checkpoint import load_model
from gpt2repro.cli import main
from gpt2repro.train_state import load_train_state

PAUSING_TRAIN = r"""
import os, shutil, sys, time
from pathlib import Path
import torch

ready, point, args = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
seen = {"replacing": False, "deleting": False}

def pause():
    ready.write_text(str(os.getpid()))
    time.sleep(600)  # until the test's SIGKILL

def is_best_or_aside(p):
    return Path(p).name == "best" or Path(p).name.startswith(".best.old-")

def wrap(real, after):
    def wrapped(*a, **k):
        out = real(*a, **k)
        after(*a)
        return out
    return wrapped

def after_save(obj, f, *rest):  # the training state written into the checkpoint's temporary
    if point.startswith("saved:") and isinstance(f, Path) and f.name == "train_state.pt":
        if Path(f).parent.name.startswith("." + point.removeprefix("saved:") + ".tmp-"):
            pause()

def after_rename(src, dst, *rest):
    if Path(src).name == "best":  # set aside, to be replaced
        seen["replacing"] = True
        if point == "best-gone":
            pause()
    if Path(dst).name == "best" and seen["replacing"] and point == "best-in":
        pause()

def is_pruned(p):  # an old step checkpoint deleted as such, or renamed out of sight first
    return Path(p).name.startswith("step_") or ".trash-" in Path(p).name

def rmtree(path, *a, **k):
    if is_best_or_aside(path):
        seen["replacing"] = seen["deleting"] = True
    if point == "prune-mid-delete" and is_pruned(path):
        seen["deleting"] = True
    real_rmtree(path, *a, **k)
    seen["deleting"] = False
    if is_best_or_aside(path) and point in ("best-gone", "best-deleted"):
        pause()  # best-gone: a writer that deletes best before renaming the new one in

def after_unlink(*a):
    if seen["deleting"] and point in ("best-mid-delete", "prune-mid-delete"):
        pause()

torch.save = wrap(torch.save, after_save)
os.rename = wrap(os.rename, after_rename)
os.replace = wrap(os.replace, after_rename)
os.unlink = wrap(os.unlink, after_unlink)
real_rmtree, shutil.rmtree = shutil.rmtree, rmtree

from gpt2repro.cli import main
main(["train", *args])
"""


def set_flags(args: list[str], **flags: str) -> list[str]:
    """`args` with the values of `--a.b-c` flags given as a_b_c="value" replaced."""
    args = list(args)
    for key, value in flags.items():
        flag = "--" + key.replace("__", ".").replace("_", "-")
        args[args.index(flag) + 1] = value
    return args


def run_until_paused(point: str, args: list[str], tmp_path: Path) -> subprocess.Popen[str]:
    """A training child process, paused at `point` (see PAUSING_TRAIN)."""
    ready = tmp_path / f"paused-{point.replace(':', '-')}"
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSING_TRAIN, str(ready), point, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for(ready.exists, proc)
    return proc


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def hidden(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("."))


def test_a_kill_mid_write_leaves_a_temporary_that_the_resume_deletes(
    corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli_args(train_config(corpus, tmp_path / "run", steps=9))
    proc = run_until_paused("saved:step_000006", args, tmp_path)
    root = tmp_path / "run" / "checkpoints"
    [tmp] = root.glob(".step_000006.tmp-*")
    assert (tmp / "train_state.pt").is_file() and not (tmp / "meta.json").exists()
    assert recover_directories(root) == [] and tmp.is_dir()  # its writer is alive: kept
    kill(proc)
    assert tmp.is_dir()  # a whole checkpoint's worth of disk, for good (before the fix)
    capsys.readouterr()
    main(["train", *args, "--checkpoint.resume", "auto"])
    out = capsys.readouterr().out
    assert f"note: deleted {tmp}, left by a killed run" in out and "resumed from" in out
    assert hidden(root) == [] and (root / "step_000009" / "meta.json").is_file()


def test_a_kill_while_pruning_leaves_no_partial_checkpoint(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    """Step 9's checkpoint is written, then step 3's deleted (keep_last=2): killed midway."""
    args = cli_args(train_config(corpus, tmp_path / "run", steps=9))
    kill(run_until_paused("prune-mid-delete", args, tmp_path))
    main(["train", *args, "--checkpoint.resume", "auto"])  # nothing to train: recovery only
    root = tmp_path / "run" / "checkpoints"
    # Not a partial step_000003, which no listing counts and nothing would ever delete.
    assert sorted(p.name for p in root.iterdir()) == ["step_000006", "step_000009"]


@pytest.mark.parametrize("point", ["best-gone", "best-in", "best-mid-delete", "best-deleted"])
def test_best_is_whole_after_a_kill_at_any_point_of_its_replacement(
    corpus: SimpleNamespace, tmp_path: Path, point: str
) -> None:
    """best/ is written at step 4 and replaced at the end (step 8), after step_000008: the
    kill comes while it is replaced, and the resume (nothing left to train) finds it whole."""
    cfg = train_config(corpus, tmp_path / "run", steps=8)
    args = set_flags(cli_args(cfg), eval__interval="4", checkpoint__interval="4")
    kill(run_until_paused(point, args, tmp_path))
    main(["train", *args, "--checkpoint.resume", "auto"])  # nothing to train: recovery only
    root = tmp_path / "run" / "checkpoints"
    best = root / "best"
    assert sorted(p.name for p in best.iterdir()) == [
        "meta.json", "model.safetensors", "tokenizer.json", "train_state.pt",
    ]  # fmt: skip
    _, _, meta = load_model(best)
    load_train_state(best)
    # Killed before the new one was in, the old one is back; after, the new one stays.
    assert meta["step"] == (4 if point == "best-gone" else 8)
    assert hidden(root) == []


def test_resume_after_a_kill_keeps_samples_and_tensorboard_to_one_section_per_step(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    runs = {}
    for name in ("straight", "killed"):
        args = cli_args(train_config(corpus, tmp_path / name, steps=12))
        args = set_flags(args, eval__sample_interval="2", checkpoint__interval="5")
        runs[name] = [a for a in args if a != "--log.no-tensorboard"]
    assert launch(runs["straight"]).wait(timeout=300) == 0
    # Killed while saving step 10: samples of steps 6, 8 and 10 are written, the resume
    # starts at step 5 and writes them again.
    kill(run_until_paused("saved:step_000010", runs["killed"], tmp_path))
    proc = launch([*runs["killed"], "--checkpoint.resume", "auto"])
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "resumed from" in out and "at step 5" in out
    samples = {name: (tmp_path / name / "samples.txt").read_text() for name in runs}
    headers = [line for line in samples["killed"].splitlines() if line.startswith("=== step")]
    assert headers == [f"=== step {s} ===" for s in (2, 4, 6, 8, 10, 12) for _ in range(2)]
    assert samples["killed"] == samples["straight"]  # exact resume: the same texts too
    scalars = {}
    for name in runs:
        acc = ea.EventAccumulator(str(tmp_path / name / "tensorboard"))
        acc.Reload()  # TensorBoard's reader, which honours the resumed writer's purge_step
        tags = ("loss", "lr", "grad_norm", "tokens")  # not the timings
        scalars[name] = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in tags}
    assert [step for step, _ in scalars["killed"]["grad_norm"]] == list(range(1, 13))
    assert scalars["killed"] == scalars["straight"]


def six_steps_then_resume_args(corpus: SimpleNamespace, run: Path) -> list[str]:
    """Train 6 steps (checkpoints at 3 and 6); returns the CLI arguments resuming to step 9."""
    args = cli_args(train_config(corpus, run, steps=6))
    main(["train", *args])
    return [*set_flags(args, run__max_steps="9"), "--checkpoint.resume", "auto"]


def poison(file: Path, marker: Path) -> None:
    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            import os

            return os.system, (f"touch {marker}",)

    torch.save({"optimizer": Payload()}, file)


@pytest.mark.parametrize(
    "damage", ["train_state.pt cut short", "model.safetensors cut short", "train_state.pt poisoned"]
)
def test_a_bad_resume_checkpoint_fails_before_the_model_is_built(
    corpus: SimpleNamespace,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    damage: str,
) -> None:
    args = six_steps_then_resume_args(corpus, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    file = root / "step_000006" / damage.split()[0]
    if damage.endswith("poisoned"):
        poison(file, tmp_path / "code-ran")
    else:
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    def built(*a: object, **k: object) -> None:
        raise AssertionError("the model was built before the checkpoint was checked")

    # Kept as patches: the order is train()'s own (the checkpoint read before step 4 builds
    # anything), so the test needs the whole command; these tripwires only watch it.
    monkeypatch.setattr("gpt2repro.training.setup.GPT", built)
    monkeypatch.setattr("gpt2repro.training.setup.peak_flops_for", built)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["train", *args])
    out, err = capsys.readouterr()
    assert exit_.value.code == 2 and "model:" not in out and "Traceback" not in err
    story = "refused for safety" if damage.endswith("poisoned") else "corrupt or incomplete"
    assert err.startswith(f"error: {file}: {story}")
    assert f"--checkpoint.resume {root / 'step_000003'}" in err
    assert not (tmp_path / "code-ran").exists()


def test_a_diverging_run_stops_before_writing_a_checkpoint_or_a_sample(
    corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = cli_args(train_config(corpus, tmp_path / "run", steps=12))
    args = set_flags(args, optim__lr="1e30", eval__sample_interval="2", checkpoint__interval="1")
    with pytest.raises(SystemExit) as exit_:
        main(["train", *args])
    _, err = capsys.readouterr()
    assert exit_.value.code == 2 and "Traceback" not in err
    assert err.startswith(
        "error: step 1: the model diverged: its loss on a validation batch is nan"
    )
    assert "Lower --optim.lr (now 1e+30) and start again" in err
    assert "gpt2repro data verify" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert not (tmp_path / "run" / "samples.txt").exists()


def test_diverging_after_a_resume_names_the_checkpoint_to_go_back_to(
    corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = six_steps_then_resume_args(corpus, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    with pytest.raises(SystemExit):
        main(["train", *set_flags(args, optim__lr="1e30")])
    err = capsys.readouterr().err
    # Step 7's update breaks the model; step 8's loss is NaN, and the check names why.
    assert err.startswith("error: step 8: the model diverged: its loss on a validation batch")
    assert (
        f"resume from the last good checkpoint, --checkpoint.resume {root / 'step_000006'}" in err
    )
    assert sorted(p.name for p in root.iterdir()) == ["best", "step_000003", "step_000006"]


def test_resuming_from_non_finite_weights_is_refused(
    corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint with NaN weights (as runs before this check wrote them) resumes no more."""
    args = six_steps_then_resume_args(corpus, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    weights = root / "step_000006" / "model.safetensors"
    state = load_file(str(weights))
    state["transformer.h.1.mlp.c_fc.weight"][0, 0] = float("nan")
    save_file(state, str(weights))
    with pytest.raises(SystemExit):
        main(["train", *args])
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: {root / 'step_000006'}: the model in it diverged: its weights "
        f"(transformer.h.1.mlp.c_fc.weight) hold inf or NaN."
    )
    assert f"--checkpoint.resume {root / 'step_000003'}" in err
    assert json.loads((root / "step_000006" / "meta.json").read_text())["step"] == 6
