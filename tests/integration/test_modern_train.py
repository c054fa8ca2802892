"""Training with the modern recipe end to end on a tiny corpus: it learns; resuming a
Muon + AdamW run from a checkpoint gives the uninterrupted run's losses and weights bit for
bit; the checkpoint exports to NanoChat, samples (KV cache with RoPE) and evaluates."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from gpt2repro.config import (
    BatchConfig,
    CheckpointConfig,
    DataConfig,
    EvalConfig,
    LogConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from gpt2repro.model import GPTConfig
from gpt2repro.presets import modern_model_options
from gpt2repro.training.loop import train


def modern_config(corpus: SimpleNamespace, out_dir: Path, steps: int = 12) -> TrainConfig:
    base = GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.1)
    return TrainConfig(
        model=modern_model_options(base),
        data=DataConfig(
            dataset=str(corpus.data_dir), data_root=corpus.root / "data", tokenizer=corpus.tokenizer
        ),
        optim=OptimConfig(
            optimizer="muon",
            lr=3e-3,
            embed_lr=0.01,
            head_lr=0.004,
            muon_lr=0.02,
            min_lr=0.0,
            warmup_steps=2,
            schedule="wsd",
            decay_fraction=0.5,
            muon_momentum_warmup_steps=6,
        ),
        batch=BatchConfig(tokens_per_step=4 * 32 * 2, micro_batch=4, seq_len=32),
        run=RunConfig(max_steps=steps, device="cpu", dtype="fp32", out_dir=out_dir, seed=7),
        eval=EvalConfig(interval=4, val_tokens=512, sample_interval=6, sample_tokens=8),
        checkpoint=CheckpointConfig(interval=4, keep_last=5),
        log=LogConfig(interval=1, tensorboard=False),
    )


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


@pytest.fixture(scope="module")
def straight(corpus: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("modern") / "straight"
    result = train(modern_config(corpus, out))
    assert result.stopped_by == "finished"
    return out


def test_modern_recipe_learns(straight: Path) -> None:
    loss = losses(straight)
    assert loss[12] < loss[1] - 0.5, loss
    meta = json.loads((straight / "checkpoints" / "step_000012" / "meta.json").read_text())
    assert meta["model_config"]["position"] == "rope" and not meta["model_config"]["tie_embeddings"]


def test_resume_with_muon_is_bit_exact(
    corpus: SimpleNamespace, straight: Path, tmp_path: Path
) -> None:
    resumed = tmp_path / "resumed"
    shutil.copytree(
        straight / "checkpoints" / "step_000004", resumed / "checkpoints" / "step_000004"
    )
    cfg = modern_config(corpus, resumed)
    cfg.checkpoint = replace(cfg.checkpoint, resume="auto")
    train(cfg)
    a, b = losses(straight), losses(resumed)
    assert sorted(b) == list(range(5, 13))
    assert all(a[k] == b[k] for k in b), (a, b)  # bit-identical floats, every step
    w0 = load_file(str(straight / "checkpoints" / "step_000012" / "model.safetensors"))
    w1 = load_file(str(resumed / "checkpoints" / "step_000012" / "model.safetensors"))
    assert all((w0[k] == w1[k]).all() for k in w0)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpt2repro", *args], capture_output=True, text=True, timeout=300
    )


def test_modern_checkpoint_exports_samples_and_evaluates(
    corpus: SimpleNamespace, straight: Path, tmp_path: Path
) -> None:
    transformers = pytest.importorskip("transformers")
    ckpt = straight / "checkpoints" / "step_000012"
    out = cli("export", str(ckpt), str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr
    assert "NanoChatForCausalLM" in out.stdout
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "NanoChatForCausalLM"
    out = cli(
        "sample", str(ckpt), "--max-new-tokens", "12", "--num-samples", "1", "--prompt", "the"
    )
    assert out.returncode == 0, out.stderr
    out = cli(
        "eval", str(ckpt), "--tasks", "val", "--data", str(corpus.data_dir), "--val-tokens", "256"
    )
    assert out.returncode == 0, out.stderr
    results = json.loads((ckpt / "eval_results.json").read_text())
    assert any(k.startswith("val:") for k in results["results"])
