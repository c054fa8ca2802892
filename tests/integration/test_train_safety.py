"""`train` never loses an earlier run and fails before step 1 on anything it can check:
old runs moved aside, datasets found by name, HellaSwag read at start-up, a failed
evaluation saves first, resuming past the end is refused, stops say how to continue."""

from __future__ import annotations

import errno
import json
import re
import shlex
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import run_with_parts, train_config

import gpt2repro.evaluation.hellaswag as hellaswag
import gpt2repro.training.loop as train_module
from gpt2repro.cli import main
from gpt2repro.config import DataConfig, TrainConfig
from gpt2repro.data.loader import Windows
from gpt2repro.data.locate import locate
from gpt2repro.data.manifest import read_manifest
from gpt2repro.data.prepare import prepare_dataset
from gpt2repro.distributed import DistInfo
from gpt2repro.metrics import MetricsWriter
from gpt2repro.tokenizer import Tokenizer
from gpt2repro.training.ensure_data import prepare_missing
from gpt2repro.training.plan import dry_run_report


@pytest.fixture(autouse=True)
def no_peak_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    """MFU's matmul measurement takes seconds per run; these tests do not read MFU."""
    monkeypatch.setattr(
        "gpt2repro.training.setup.peak_flops_for", lambda device, dtype: (1e12, "test")
    )


def prepare_and_locate(cfg: DataConfig) -> tuple[Path, Tokenizer]:
    """Training setup's two data steps, on a single process: prepare what is missing, find it."""
    prepare_missing(cfg, DistInfo())
    return locate(cfg.data_root, cfg.dataset, cfg.tokenizer)


def rows(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory (except the TensorBoard folder), by relative path."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and "tensorboard" not in p.parts
    }


def finished_run(corpus: SimpleNamespace, run_dir: Path, steps: int) -> TrainConfig:
    """A tiny run of `steps` steps, trained to the end; returns its config."""
    cfg = train_config(corpus, run_dir, steps=steps)
    cfg.log.tensorboard = False
    train_module.train(cfg)
    return cfg


def test_rerun_moves_the_old_run_aside(
    corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run1"
    before = snapshot(finished_run(corpus, run, steps=9).run.out_dir)
    assert {"checkpoints/step_000009/meta.json", "checkpoints/best/meta.json"} <= before.keys()
    capsys.readouterr()

    again = train_config(corpus, run, steps=3)  # a shorter, worse run into the same out_dir
    again.log.tensorboard = False
    result = train_module.train(again)
    out = capsys.readouterr().out
    assert f"moved it to {tmp_path / 'run1.1'}" in out and "--checkpoint.resume auto" in out
    assert snapshot(tmp_path / "run1.1") == before  # nothing of the earlier run lost
    assert result.checkpoint == run / "checkpoints" / "step_000003"
    assert result.checkpoint.is_dir()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "step_000003"]
    assert [r["step"] for r in rows(run) if r["kind"] == "train"] == [1, 2, 3]

    train_module.train(again)  # a third time: the next free name
    assert (tmp_path / "run1.2" / "checkpoints" / "step_000003").is_dir()
    assert snapshot(tmp_path / "run1.1") == before


def test_resuming_past_the_end_is_refused_and_at_the_end_trains_nothing(
    corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    cfg = finished_run(corpus, run, steps=6)
    before = snapshot(run)
    cfg.checkpoint.resume = "auto"
    cfg.run.max_steps = 4
    with pytest.raises(ValueError, match=r"at step 6, past run\.max_steps=4: nothing to train"):
        dry_run_report(cfg)
    with pytest.raises(ValueError, match=r"at step 6, past run\.max_steps=4: nothing to train"):
        train_module.train(cfg)
    assert snapshot(run) == before
    cfg.run.max_steps = 6
    capsys.readouterr()
    result = train_module.train(cfg)
    assert "nothing to train" in capsys.readouterr().out
    assert result.state.step == 6 and not result.final_val
    assert rows(run) == [json.loads(line) for line in before["metrics.jsonl"].splitlines()]


def test_dry_run_checks_what_the_run_checks(corpus: SimpleNamespace, tmp_path: Path) -> None:
    cfg = train_config(corpus, tmp_path / "run")
    cfg.data.tokenizer = "train:abc"
    with pytest.raises(ValueError, match=r"data\.tokenizer='train:abc'"):
        dry_run_report(cfg)
    cfg = train_config(corpus, tmp_path / "run")
    cfg.checkpoint.resume = str(tmp_path / "nonexistent")
    with pytest.raises(ValueError, match="no checkpoint there"):
        dry_run_report(cfg)
    with pytest.raises(ValueError, match="no checkpoint there"):
        train_module.train(cfg)


def test_time_limit_stops_with_a_checkpoint_and_says_how_to_continue(
    corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = train_config(corpus, tmp_path / "run", steps=1000)
    cfg.run.max_minutes = 1e-9  # past after the first step
    cfg.log.tensorboard = False
    cfg.eval.interval = cfg.eval.sample_interval = 1
    result = train_module.train(cfg)
    assert result.stopped_by == "time_limit" and result.state.step == 1
    assert result.signal is None
    assert result.checkpoint == tmp_path / "run" / "checkpoints" / "step_000001"
    assert json.loads((result.checkpoint / "meta.json").read_text())["step"] == 1
    assert result.final_val  # a time limit still evaluates at the end
    out = capsys.readouterr().out
    assert "stopped at step 1 of 1000 (time limit); continue with --checkpoint.resume auto" in out
    minutes = f"{result.state.train_seconds / 60:.4g}"
    assert f"({minutes} min so far): pass --run.max-minutes above {minutes}" in out
    # Evaluated and sampled once, though step 1 is also due for both (eval.interval=1).
    assert [r["step"] for r in rows(cfg.run.out_dir) if r["kind"] == "val"] == [1]
    assert (cfg.run.out_dir / "samples.txt").read_text().count("=== step 1 ===") == 2
    before = snapshot(cfg.run.out_dir)
    cfg.checkpoint.resume = "auto"  # the same budget again: refused before a step
    with pytest.raises(ValueError, match=f"pass --run.max-minutes above {minutes}"):
        train_module.train(cfg)
    with pytest.raises(ValueError, match=f"pass --run.max-minutes above {minutes}"):
        dry_run_report(cfg)  # the dry run refuses it alike
    assert snapshot(cfg.run.out_dir) == before


class FullDiskAtStep:
    """The run's metrics writer, but writing the validation record of step `step` fails as a
    full disk does; everything else is the writer's own."""

    def __init__(self, writer: MetricsWriter, step: int) -> None:
        self.writer, self.step = writer, step

    def write(self, record: dict[str, object]) -> None:
        if record["kind"] == "val" and record["step"] == self.step:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.writer.write(record)

    def __getattr__(self, name: str) -> object:
        return getattr(self.writer, name)


def test_failed_evaluation_saves_first(corpus: SimpleNamespace, tmp_path: Path) -> None:
    # The whole loop: that it saves before it stops, and that the resume finishes, are the
    # loop's doing. The fault comes in through a part (the writer), not a patched loop.
    cfg = train_config(corpus, tmp_path / "run", steps=12)
    cfg.checkpoint.interval, cfg.log.tensorboard = 0, False
    with pytest.raises(OSError, match="No space left"):
        run_with_parts(cfg, writer=lambda w: FullDiskAtStep(w, 8))
    saved = tmp_path / "run" / "checkpoints" / "step_000008"
    assert json.loads((saved / "meta.json").read_text())["step"] == 8
    cfg.checkpoint.resume = "auto"
    result = train_module.train(cfg)
    assert result.stopped_by == "finished" and result.state.step == 12


def test_hellaswag_is_checked_before_anything_is_written(
    corpus: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hellaswag, "cache_dir", lambda: tmp_path / "cache")
    monkeypatch.setattr(hellaswag, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
    cfg = train_config(corpus, tmp_path / "run", steps=4)
    cfg.eval.hellaswag = True
    with pytest.raises(ConnectionError) as err:
        train_module.train(cfg)
    assert "(--eval.hellaswag-path PATH)" in str(err.value)  # train's flag, not eval's
    assert "(--hellaswag-path" not in str(err.value)
    cfg.eval.hellaswag_path = tmp_path / "nope.jsonl"
    with pytest.raises(ValueError, match=r"eval\.hellaswag_path='.*nope\.jsonl': no such file"):
        train_module.train(cfg)
    assert not (tmp_path / "run").exists()


def test_dataset_prepared_from_files_is_used_by_name(
    corpus: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_prepare(*args: object, **kwargs: object) -> Path:
        raise AssertionError("train must use the prepared dataset, not prepare it again")

    # The offline route for tinystories: local files prepared under the known name.
    root = tmp_path / "data"
    texts = [str(corpus.root / "texts" / "doc00*.txt")]
    prepare_dataset("files", root, "gpt2", paths=texts, out_name="tinystories", val_fraction=0.2,
                    workers=1, progress=False)  # fmt: skip
    monkeypatch.setattr("gpt2repro.data.prepare.prepare_dataset", no_prepare)
    data_dir, tok = prepare_and_locate(DataConfig("tinystories", root, "gpt2"))
    assert data_dir == root / "tinystories" and tok.identifier == "gpt2"
    # A local name (`prepare files --name tiny`), with the tokenizer it was prepared with.
    cfg = DataConfig("tiny", corpus.root / "data", corpus.tokenizer)
    assert prepare_and_locate(cfg)[0] == corpus.data_dir


def test_offline_train_n_tokenizer_names_a_local_route_that_works(
    corpus: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # data.tokenizer=train:N offline: the advice must not be "prepare files --name X" alone
    # (done already, with gpt2 tokens), but the two commands that give this run its tokenizer
    # and its tokens. Run exactly those, with local files for FILES.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = DataConfig("tinystories", tmp_path / "data", "train:300")
    with pytest.raises(ConnectionError, match="HF_HUB_OFFLINE") as e:
        prepare_and_locate(cfg)
    commands = re.findall(r"`(gpt2repro [^`]+)`", str(e.value))
    assert [c.split()[1] for c in commands] == ["tokenizer", "prepare"], commands
    files = [str(p) for p in sorted((corpus.root / "texts").glob("doc00*.txt"))]
    for command in commands:
        argv = shlex.split(command)[1:]
        at = argv.index("PATHS...")
        main([*argv[:at], *files, *argv[at + 1 :]])
    data_dir, tok = prepare_and_locate(cfg)
    assert tok.vocab_size == 300 and data_dir.name == f"tinystories-{tok.identifier}"
    assert read_manifest(data_dir)["tokenizer"]["identifier"] == tok.identifier


def test_dataset_with_another_tokenizer_says_which(corpus: SimpleNamespace) -> None:
    cfg = DataConfig("tiny", corpus.root / "data", "gpt2")
    with pytest.raises(ValueError) as err:
        prepare_and_locate(cfg)
    msg = str(err.value)
    assert "was prepared with tokenizer bpe-" in msg and "this run uses gpt2" in msg
    assert f"--data.tokenizer {corpus.tokenizer}" in msg


def test_unknown_local_name_says_how_to_prepare(tmp_path: Path) -> None:
    cfg = DataConfig("mine", tmp_path, "gpt2")
    with pytest.raises(FileNotFoundError, match="gpt2repro prepare files PATHS --name mine"):
        prepare_and_locate(cfg)


def test_real_prepare_then_train_by_name(corpus: SimpleNamespace, tmp_path: Path) -> None:
    """The reviewer's command pair, end to end: `prepare files --name tiny`, `train --data.dataset tiny`."""
    prepare_dataset(
        "files",
        tmp_path / "d",
        corpus.tokenizer,
        paths=[str(corpus.root / "texts" / "*.txt")],
        out_name="tiny",
        val_fraction=0.1,
        workers=1,
        progress=False,
    )
    cfg = train_config(corpus, tmp_path / "run", steps=2)
    cfg.data = DataConfig("tiny", tmp_path / "d", corpus.tokenizer)
    cfg.eval.interval, cfg.log.tensorboard = 0, False
    assert train_module.train(cfg).state.step == 2


@pytest.mark.parametrize("change", ["model", "seq_len"])
def test_refused_resume_leaves_the_runs_records_as_they_were(
    corpus: SimpleNamespace, tmp_path: Path, change: str
) -> None:
    run = tmp_path / "run"
    cfg = finished_run(corpus, run, steps=3)
    before = snapshot(run)
    cfg.checkpoint.resume, cfg.run.max_steps = "auto", 6
    if change == "model":
        cfg.model.n_embd *= 2
        refusal = r"the checkpoint's model differs from this run's \(n_embd 32 -> 64\)"
    else:
        cfg.batch.seq_len //= 2
        refusal = r"Cannot resume the data order: seq_len 32 -> 16"
    with pytest.raises(ValueError, match=refusal):
        train_module.train(cfg)
    assert snapshot(run) == before  # config.json and environment.json included


def test_resume_with_another_micro_batch_trains_on_the_same_windows(
    corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Micro-batch 4 x 2 accumulation steps, resumed at step 3 as 2 x 4: the same windows
    make each optimizer step, so the losses are the uninterrupted run's (summation order aside)."""
    straight = train_config(corpus, tmp_path / "straight", steps=6)
    straight.model.dropout, straight.log.tensorboard = 0.0, False  # masks depend on the shapes
    train_module.train(straight)
    cfg = train_config(corpus, tmp_path / "resumed", steps=6)
    cfg.model.dropout, cfg.log.tensorboard, cfg.batch.micro_batch = 0.0, False, 2
    cfg.checkpoint.resume = str(tmp_path / "straight" / "checkpoints" / "step_000003")
    capsys.readouterr()
    train_module.train(cfg)
    assert (
        "note: data: micro-batch 4 x 1 rank(s) -> 2 x 1; epoch 0 goes on" in capsys.readouterr().out
    )
    a = {r["step"]: r["loss"] for r in rows(tmp_path / "straight") if r["kind"] == "train"}
    b = {r["step"]: r["loss"] for r in rows(tmp_path / "resumed") if r["kind"] == "train"}
    assert sorted(b) == [4, 5, 6]
    assert all(abs(a[k] - b[k]) < 1e-5 for k in b), (a, b)


@pytest.mark.parametrize("damaged", ["model.safetensors", "train_state.pt"])
def test_damaged_newest_checkpoint_names_the_file_and_an_older_one(
    corpus: SimpleNamespace, tmp_path: Path, damaged: str
) -> None:
    cfg = train_config(corpus, tmp_path / "run", steps=6)
    cfg.eval.interval, cfg.log.tensorboard = 0, False
    train_module.train(cfg)
    root = tmp_path / "run" / "checkpoints"
    file = root / "step_000006" / damaged
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # cut short by a full disk
    cfg.checkpoint.resume = "auto"
    with pytest.raises(ValueError) as err:
        train_module.train(cfg)
    msg = str(err.value)
    assert msg.startswith(f"{file}: corrupt or incomplete") and "\n" not in msg
    assert f"--checkpoint.resume {root / 'step_000003'}" in msg
    cfg.checkpoint.resume = str(root / "step_000003")  # the advice works
    assert train_module.train(cfg).state.step == 6


def test_sample_settings_are_checked_before_anything_is_written(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    cfg = train_config(corpus, tmp_path / "run", steps=2)
    cfg.eval.sample_tokens = 0
    with pytest.raises(ValueError, match=r"eval\.sample_tokens=0 must be >= 1"):
        train_module.train(cfg)
    cfg = train_config(corpus, tmp_path / "run", steps=2)
    cfg.eval.sample_prompt = "speak " * 40  # over 32 tokens, the model's context
    with pytest.raises(ValueError, match=r"longer than model\.block_size=32"):
        train_module.train(cfg)
    assert not (tmp_path / "run").exists()


def test_too_small_val_split_names_the_flags(corpus: SimpleNamespace, tmp_path: Path) -> None:
    seq_len = Windows(corpus.data_dir, "val", 1).total + 1  # one token more than the split has
    cfg = train_config(corpus, tmp_path / "run", steps=2)
    cfg.model.block_size = cfg.batch.seq_len = cfg.batch.tokens_per_step = seq_len
    cfg.batch.micro_batch, cfg.eval.val_tokens = 1, seq_len
    with pytest.raises(ValueError) as err:
        train_module.train(cfg)
    msg = str(err.value)
    assert "val split is too small, 0 window(s)" in msg
    assert "--batch.seq-len" in msg and "--val-fraction" in msg
