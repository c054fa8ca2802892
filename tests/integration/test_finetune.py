"""Fine-tuning end to end (`train --model.init-from SOURCE`), on tiny local sources only.

Sources: a random `transformers.GPT2LMHeadModel` saved with `save_pretrained` (GPT-2's
tokenizer), and a tiny gpt2repro run (the corpus's 300-token BPE). The fine-tune's first
evaluation is the source's own loss, equal to transformers'; training lowers it; a SIGKILL
and resume is bit-exact; bf16 and compiled fine-tunes start from the source; shape flags
against the source and data of another tokenizer are refused in one message each.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from helpers import (
    assert_user_error,
    cli_args,
    launch,
    run_cli,
    train_config,
    train_losses,
    train_rows,
    wait_for,
)
from safetensors.torch import load_file

from gpt2repro.data.loader import eval_batches
from gpt2repro.data.prepare import prepare_dataset

transformers = pytest.importorskip("transformers")

SEQ = 32


def rows(run_dir: Path, kind: str) -> list[dict[str, float]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def finetune_args(data_dir: Path, data_root: Path, out_dir: Path, steps: int) -> list[str]:
    """A tiny fp32 CPU fine-tune: no --model.* shape flags, the source gives the shape."""
    return [
        "--data.dataset", str(data_dir),
        "--data.data-root", str(data_root),
        "--optim.lr", "3e-3",
        "--optim.min-lr", "3e-3",
        "--optim.warmup-steps", "0",
        "--batch.tokens-per-step", str(2 * 4 * SEQ),
        "--batch.micro-batch", "4",
        "--batch.seq-len", str(SEQ),
        "--run.max-steps", str(steps),
        "--run.device", "cpu",
        "--run.dtype", "fp32",
        "--run.out-dir", str(out_dir),
        "--run.seed", "7",
        "--eval.interval", "4",
        "--eval.val-tokens", str(4 * SEQ),
        "--eval.sample-interval", "0",
        "--eval.sample-tokens", "4",
        "--checkpoint.interval", "2",
        "--checkpoint.keep-last", "10",
        "--log.interval", "1",
        "--log.no-tensorboard",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def hf_source(corpus: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A random tiny GPT2LMHeadModel (GPT-2's vocabulary) and the corpus in GPT-2 tokens."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(root / "model")
    data_dir = prepare_dataset(
        "files",
        root / "data",
        "gpt2",
        paths=[str(corpus.root / "texts" / "*.txt")],
        out_name="tiny_gpt2",
        val_fraction=0.1,
        workers=1,
        progress=False,
    )
    return SimpleNamespace(model=model, dir=root / "model", data_dir=data_dir, root=root)


@pytest.fixture(scope="module")
def source_run(corpus: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny gpt2repro run (the corpus's BPE), its directory standing for its last checkpoint."""
    out = tmp_path_factory.mktemp("source") / "run"
    cfg = train_config(corpus, out, steps=4)
    proc = launch(cli_args(cfg))
    assert proc.wait(timeout=300) == 0, proc.communicate()[1][-2000:]
    return out


def reference_loss(model: torch.nn.Module, data_dir: Path) -> float:
    """transformers' mean next-token loss on the windows a run's evaluation reads."""
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in eval_batches(data_dir, "val", 4, SEQ, 4 * SEQ):
            logits = model(x).logits  # (B, T, V)
            loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
            total, count = total + loss.double().item() * y.numel(), count + y.numel()
    return total / count


@pytest.mark.parametrize("block_size", [None, SEQ])
def test_the_first_evaluation_is_the_sources_loss_under_transformers(
    hf_source: SimpleNamespace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    block_size: int | None,
) -> None:
    """Step 0 is evaluated before any update; a smaller block size crops the position table."""
    out = tmp_path / "ft"
    args = finetune_args(hf_source.data_dir, hf_source.root / "data", out, steps=1)
    crop = [] if block_size is None else ["--model.block-size", str(block_size)]
    code, _, err = run_cli(["train", *args, "--model.init-from", str(hf_source.dir), *crop], capsys)
    assert code == 0, err
    val = rows(out, "val")
    assert val[0]["step"] == 0
    expected = reference_loss(hf_source.model, hf_source.data_dir)
    assert abs(val[0]["loss"] - expected) < 1e-5, (val[0]["loss"], expected)
    config = json.loads((out / "config.json").read_text())
    assert config["init"]["source"] == str(hf_source.dir)
    assert config["model"]["block_size"] == (block_size or 64)
    assert config["model"]["n_layer"] == 2 and config["data"]["tokenizer"] == "gpt2"


def test_a_finetune_lowers_the_loss_and_its_card_says_so(
    source_run: Path, corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ft"
    args = finetune_args(corpus.data_dir, corpus.root / "data", out, steps=8)
    args += ["--eval.val-tokens", str(1 << 20)]  # the source run's budget: the whole split
    code, _, err = run_cli(["train", *args, "--model.init-from", str(source_run)], capsys)
    assert code == 0, err
    val = {r["step"]: r["loss"] for r in rows(out, "val")}
    assert sorted(val) == [0, 4, 8]
    assert val[8] < val[0] - 0.05, val
    # The source's weights were the start: its step-0 loss is the source run's best one.
    source_val = min(r["loss"] for r in rows(source_run, "val"))
    assert abs(val[0] - source_val) < 1e-5, (val[0], source_val)
    code, _, err = run_cli(["card", str(out), "--export-dir", str(tmp_path / "hf")], capsys)
    assert code == 0, err
    readme = (tmp_path / "hf" / "README.md").read_text()
    assert f"fine-tuned from `{source_run / 'checkpoints' / 'best'}`" in readme, readme[:800]


def test_resume_after_sigkill_continues_the_finetune_bit_exactly(
    source_run: Path, corpus: SimpleNamespace, tmp_path: Path
) -> None:
    """The resumed run reads its checkpoint, not the source again."""
    steps = 12
    runs = {}
    for name in ("straight", "killed"):
        runs[name] = [
            *finetune_args(corpus.data_dir, corpus.root / "data", tmp_path / name, steps),
            "--model.init-from", str(source_run),
            "--model.dropout", "0.1",  # the resume must restore the RNG too
        ]  # fmt: skip
    proc = launch(runs["straight"])
    assert proc.wait(timeout=300) == 0, proc.communicate()[1][-2000:]
    proc = launch(runs["killed"])
    wait_for((tmp_path / "killed" / "checkpoints" / "step_000004").exists, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    done = sorted((tmp_path / "killed" / "checkpoints").glob("step_*"))
    assert done and int(done[-1].name[5:]) < steps, "the run finished before the kill; test is void"
    proc = launch([*runs["killed"], "--checkpoint.resume", "auto"])
    stdout, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    assert "resumed from" in stdout
    a, b = train_losses(tmp_path / "straight"), train_losses(tmp_path / "killed")
    assert len(train_rows(tmp_path / "killed")) == steps
    assert sorted(a) == list(range(1, steps + 1)) and a == b
    assert [r["step"] for r in rows(tmp_path / "killed", "val")] == [0, 4, 8, 12]
    final = f"checkpoints/step_{steps:06d}/model.safetensors"
    wa, wb = (
        load_file(str(tmp_path / "straight" / final)),
        load_file(str(tmp_path / "killed" / final)),
    )
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_shape_flags_against_the_source_are_refused_in_one_message(
    hf_source: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = finetune_args(hf_source.data_dir, hf_source.root / "data", tmp_path / "ft", steps=1)
    bad = ["--model.n-layer", "3", "--model.n-embd", "48", "--model.block-size", "256"]
    code, _, err = run_cli(["train", *args, "--model.init-from", str(hf_source.dir), *bad], capsys)
    assert code == 2
    assert_user_error(
        code,
        err,
        "model.n_layer=3 (the source has 2)",
        "model.n_embd=48 (the source has 32)",
        "model.block_size=256 (the source has 64",
    )
    assert err.count("error:") == 1
    assert not (tmp_path / "ft").exists()


def test_data_of_another_tokenizer_is_refused_with_the_command_that_prepares_it(
    hf_source: SimpleNamespace,
    corpus: SimpleNamespace,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The corpus holds BPE-300 tokens; the source reads GPT-2's."""
    args = finetune_args(corpus.data_dir, corpus.root / "data", tmp_path / "ft", steps=1)
    code, _, err = run_cli(["train", *args, "--model.init-from", str(hf_source.dir)], capsys)
    assert code == 2
    assert_user_error(code, err, "--model.init-from", "`gpt2repro prepare files --name tiny")


def test_a_hub_source_offline_names_the_local_directory_route(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--model.init-from", "gpt2", "--dry-run"], capsys)
    assert code == 2
    assert_user_error(code, err, "local directory")


def test_a_missing_source_says_how_to_make_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs_out/ here
    code, _, err = run_cli(["train", "--preset", "finetune_shakespeare_cpu", "--dry-run"], capsys)
    assert_user_error(code, err, "no such file or directory", "run `gpt2repro train` first")


@pytest.mark.parametrize("preset", ["finetune_shakespeare", "finetune_shakespeare_cpu"])
def test_finetune_presets_dry_run_from_a_local_source(
    preset: str, source_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each preset's flags parse and validate; its source is replaced by a local one (the
    hub is not reachable here, and the CPU preset's default run may not exist)."""
    shape = ["--batch.seq-len", str(SEQ), "--batch.tokens-per-step", str(32 * SEQ)]
    shape += ["--batch.micro-batch", "1", "--eval.val-tokens", str(4 * SEQ)]
    argv = ["train", "--preset", preset, "--model.init-from", str(source_run), *shape]
    code, out, err = run_cli([*argv, "--dry-run"], capsys)
    assert code == 0, err
    assert '"n_layer": 2' in out and '"n_embd": 32' in out  # the source's shape, not the preset's
    assert f'"source": "{source_run / "checkpoints" / "best"}"' in out


def test_a_bf16_finetune_starts_from_the_sources_loss(
    source_run: Path, corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The weights load in fp32 before autocast: bf16 evaluates the same model, rounded."""
    out = tmp_path / "ft"
    args = finetune_args(corpus.data_dir, corpus.root / "data", out, steps=2)
    args += ["--eval.val-tokens", str(1 << 20), "--run.dtype", "bf16"]
    code, _, err = run_cli(["train", *args, "--model.init-from", str(source_run)], capsys)
    assert code == 0, err
    source_val = min(r["loss"] for r in rows(source_run, "val"))
    assert abs(rows(out, "val")[0]["loss"] - source_val) < 0.05


def test_a_compiled_finetune_trains_like_an_eager_one(
    source_run: Path, corpus: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The source's weights go in before torch.compile wraps the model: the compiled run
    starts from the source's loss and takes the eager run's steps (fp32; compiled kernels
    round differently, far below what a missed or misplaced weight would change)."""
    source_val = min(r["loss"] for r in rows(source_run, "val"))
    losses = {}
    for mode in ("eager", "compiled"):
        out = tmp_path / mode
        args = finetune_args(corpus.data_dir, corpus.root / "data", out, steps=3)
        args += ["--eval.val-tokens", str(1 << 20), "--run.compile", str(mode == "compiled")]
        code, _, err = run_cli(["train", *args, "--model.init-from", str(source_run)], capsys)
        assert code == 0, err
        losses[mode] = train_losses(out)
        assert json.loads((out / "config.json").read_text())["run"]["compile"] is (
            mode == "compiled"
        )
        assert abs(rows(out, "val")[0]["loss"] - source_val) < 1e-5
    eager, compiled = losses["eager"], losses["compiled"]
    assert sorted(eager) == sorted(compiled) == [1, 2, 3]
    assert max(abs(eager[k] - compiled[k]) for k in eager) < 1e-4, losses
