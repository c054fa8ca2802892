"""CORE under torchrun: `gpt2repro eval --tasks core` on two gloo ranks writes the results of
one process (two tasks have odd example counts, so the ranks' shares of them differ)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from unit.test_core import write_bundle

from gpt2repro.checkpoint import save_checkpoint
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import GPT2Tokenizer

from .launch import child_env, finish


@pytest.mark.distributed
def test_two_ranks_score_core_as_one_process(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32))
    ckpt = save_checkpoint(tmp_path / "ckpt", model, GPT2Tokenizer(), {"step": 1})
    bundle = write_bundle(tmp_path / "eval_bundle")
    results = {}
    for nproc in (1, 2):
        out = tmp_path / f"results_{nproc}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "gpt2repro", "eval", str(ckpt),
               "--tasks", "core", "--core-path", str(bundle), "--device", "cpu",
               "--dtype", "fp32", "--batch-size", "1", "--out", str(out)]  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
        )
        printed = finish(proc)
        assert printed.count("OpenAI GPT-2 124M") == 1, printed  # rank 0 prints, once
        results[nproc] = json.loads(out.read_text())["results"]
    assert list(results[2]) == list(results[1])
    for task, entry in results[1].items():
        assert results[2][task]["metrics"] == entry["metrics"], task
        assert results[2][task]["samples"] == entry["samples"], task
