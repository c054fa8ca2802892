"""A training run's directory: its layout, setting an earlier run aside, and which
checkpoint a run resumes from. The one place that spells the layout:

    <out_dir>/
      config.json, environment.json    the resolved config and the machine, written once
                                       the run has started (a refused resume leaves them)
      metrics.jsonl, samples.txt       appended as the run goes; trimmed back to the
                                       checkpoint's step when a run resumes
      tensorboard/, loss.png           TensorBoard's event files and the loss plot
      checkpoints/step_NNNNNN/         every checkpoint.interval steps; the newest
                                       checkpoint.keep_last are kept
      checkpoints/best/                the lowest validation loss so far
      checkpoints/abandoned/           later steps, set aside when a run resumes from an
                                       earlier checkpoint (nothing of a run is deleted)

A new run never writes into an earlier run's directory: that run is moved to
`<out_dir>.1` (`.2`, ...) first. Only resuming (`checkpoint.resume`) continues a directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpt2repro.atomic import delete_directory, move_aside, recover_directories
from gpt2repro.checkpoint import META, TRAIN_STATE, DamagedCheckpoint, is_checkpoint
from gpt2repro.distributed import DistInfo, broadcast_object, gather_objects, wait_for_main
from gpt2repro.train_state import check_files

STEP_PREFIX = "step_"


def step_of(path: Path) -> int:
    """The step in a `step_NNNNNN` checkpoint's name."""
    return int(path.name.removeprefix(STEP_PREFIX))


def step_dirs(ckpt_root: Path) -> list[Path]:
    """Valid step_NNNNNN checkpoints under `ckpt_root`, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [
        p
        for p in ckpt_root.glob(f"{STEP_PREFIX}*")
        if p.is_dir()
        and p.name.removeprefix(STEP_PREFIX).isdigit()
        and is_checkpoint(p)
        and (p / TRAIN_STATE).is_file()
    ]
    return sorted(found, key=step_of)


@dataclass(frozen=True)
class RunDir:
    """The directory of one training run (`run.out_dir`) and what lies where in it."""

    path: Path

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best"

    @property
    def abandoned(self) -> Path:
        return self.checkpoints / "abandoned"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples(self) -> Path:
        return self.path / "samples.txt"

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def environment(self) -> Path:
        return self.path / "environment.json"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    def step_checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{STEP_PREFIX}{step:06d}"

    def step_checkpoints(self) -> list[Path]:
        """The valid step checkpoints, oldest first."""
        return step_dirs(self.checkpoints)

    def find_resume(self, choice: str) -> Path | None:
        """The checkpoint that `checkpoint.resume = choice` names: none -> None, auto -> the
        newest step checkpoint here (None if there is none), anything else -> that directory."""
        if choice == "none":
            return None
        if choice == "auto":
            found = self.step_checkpoints()
            return found[-1] if found else None
        return Path(choice)

    def holds_run(self, resume: Path | None) -> bool:
        """Whether the directory holds a run that this one would overwrite, not continue."""
        if not (self.metrics.exists() or self.checkpoints.exists()):
            return False
        return resume is None or not resume.resolve().is_relative_to(self.path.resolve())

    def recover(self, dist: DistInfo) -> None:
        """Finish what a killed run left half-done in checkpoints/ (rank 0; the others wait):
        a checkpoint half-replaced is put back, abandoned temporaries are deleted
        (`atomic.recover_directories`)."""
        if dist.is_main:
            for note in recover_directories(self.checkpoints):
                print(f"note: {note}", flush=True)
        wait_for_main(dist)

    def prepare(self, resume: Path | None, dist: DistInfo) -> None:
        """Move an earlier run aside (rank 0; the others wait) and make the directory."""
        if dist.is_main:
            if self.holds_run(resume):
                moved = move_aside(self.path, self.path)  # it exists: the name gets a number
                print(
                    f"note: {self.path} held an earlier run; moved it to {moved}. "
                    f"To continue a run instead, pass --checkpoint.resume auto.",
                    flush=True,
                )
            self.path.mkdir(parents=True, exist_ok=True)
        wait_for_main(dist)  # no rank looks into the directory before the move

    def prune(self, keep_last: int, newest: Path) -> None:
        """Keep `newest` (the checkpoint just written) and the `keep_last - 1` step
        checkpoints before it; delete older ones. `best` lives apart.

        Ordered by step relative to `newest`, not by what the folder holds: checkpoints of
        later steps (left by a run that this one resumed from an earlier point) are never
        deleted, and neither is `newest`, whatever else is there.
        """
        assert keep_last >= 1, f"keep_last={keep_last} must be >= 1"
        older = [p for p in self.step_checkpoints() if step_of(p) < step_of(newest)]
        for old in older[: max(0, len(older) - (keep_last - 1))]:
            delete_directory(old)

    def set_aside_after(self, step: int) -> list[Path]:
        """Move step checkpoints later than `step` into abandoned/; returns where they went.

        A run resumed from an earlier checkpoint rewrites the later steps; left in place, the
        old ones would be what `--checkpoint.resume auto` picks next.
        """
        later = [p for p in self.step_checkpoints() if step_of(p) > step]
        return [move_aside(p, self.abandoned / p.name) for p in later]


def fallback_advice(source: Path) -> str:
    """What to resume from instead of damaged step checkpoint `source`, as a sentence."""
    if not source.name.removeprefix(STEP_PREFIX).isdigit():  # best, or a copy elsewhere
        return "Pass another checkpoint to --checkpoint.resume."
    older = [p for p in step_dirs(source.parent) if step_of(p) < step_of(source)]
    if not older:
        return (
            f"There is no older step checkpoint in {source.parent}: start a new run "
            f"(drop --checkpoint.resume)."
        )
    return (
        f"Resume from the next older checkpoint with --checkpoint.resume {older[-1]}, or delete "
        f"{source} so --checkpoint.resume auto skips it."
    )


def more_minutes(trained_s: float, max_minutes: float) -> str:
    """How to give a run that used up `max_minutes` more time, as a sentence."""
    done = trained_s / 60
    return (
        f"--run.max-minutes counts the training time of every resume ({done:.4g} min so far): "
        f"pass --run.max-minutes above {done:.4g} (e.g. {done + max_minutes:.4g} for "
        f"{max_minutes:.4g} more)"
    )


def resume_point(
    choice: str, run_dir: RunDir, max_steps: int, max_minutes: float | None = None
) -> tuple[Path, int] | None:
    """The checkpoint `choice` resumes from and its step, its files read now, so a damaged
    or unsafe one, or one past the end of the run (its steps or its minutes), fails before
    anything else happens (the model is built, the device measured). None: a fresh start."""
    source = run_dir.find_resume(choice)
    if source is None:
        return None
    try:
        meta = check_files(source)
    except DamagedCheckpoint as e:
        raise DamagedCheckpoint(f"{e} {fallback_advice(source)}") from None
    step = meta.get("step")
    if not isinstance(step, int):
        raise ValueError(f"{source / META}: no step; it is not a training checkpoint.")
    if step > max_steps:
        raise ValueError(
            f"{source} is at step {step}, past run.max_steps={max_steps}: nothing to train. "
            f"Pass --run.max-steps above {step} to train on from it, or drop "
            f"--checkpoint.resume to start a new run."
        )
    trained_s = meta.get("train_state", {}).get("train_seconds", 0.0)
    if max_minutes is not None and trained_s >= 60 * max_minutes:
        raise ValueError(
            f"{source} has already trained {trained_s / 60:.4g} min, the whole "
            f"run.max_minutes={max_minutes:.4g}: nothing to train. "
            f"{more_minutes(trained_s, max_minutes)} to train on from it."
        )
    return source, step


def decide_resume(
    run_dir: RunDir, choice: str, max_steps: int, max_minutes: float | None, dist: DistInfo
) -> tuple[Path, int] | None:
    """The checkpoint this run resumes from and its step, decided once: rank 0 finishes what
    a killed run left half-done, reads the checkpoint (`resume_point`) and tells the others,
    who check that they can read it too (every node must see the run directory)."""
    if choice != "none":  # a new run moves an earlier one aside, leftovers and all
        run_dir.recover(dist)
    decision: tuple[Path, int] | Exception | None = None
    if dist.is_main:
        try:
            decision = resume_point(choice, run_dir, max_steps, max_minutes)
        except (ValueError, OSError) as e:  # every rank raises it, none waits for rank 0
            decision = e
    decision = broadcast_object(decision, dist)
    if isinstance(decision, Exception):
        raise decision
    if decision is not None and dist.enabled:
        readable = gather_objects(is_checkpoint(decision[0]), dist)
        blind = [rank for rank, ok in enumerate(readable) if not ok]
        if blind:
            raise ValueError(
                f"{decision[0]}: rank(s) {blind} cannot read this checkpoint. Put run.out_dir "
                f"on a filesystem that every node mounts, or copy the checkpoint there."
            )
    return decision
