"""Run by test_eval under torchrun: validation loss of one seeded model on every rank,
as a plain replica and FSDP-sharded, and a small all-reduce bandwidth measurement;
rank 0 writes the results as JSON."""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

from gpt2repro.distributed import init_distributed, measure_allreduce, shutdown
from gpt2repro.evaluation.val import split_loss
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import wrap_model

CONFIG = GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=32)
BATCH, SEQ = 3, 32


def seeded_model() -> GPT:
    torch.manual_seed(0)
    return GPT(CONFIG)


def main(data_dir: Path, out: Path) -> None:
    device = torch.device("cpu")
    dist = init_distributed(device)
    model = seeded_model()
    results = {"plain": split_loss(model, data_dir, "val", BATCH, SEQ, None, device, "fp32", dist)}
    sharded = wrap_model(model, device, compile=False, dist=dist, parallel="fsdp")
    results["fsdp"] = split_loss(sharded, data_dir, "val", BATCH, SEQ, None, device, "fp32", dist)
    bandwidth = measure_allreduce(dist, megabytes=1.0, iters=2)
    if dist.is_main:
        out.write_text(json.dumps({"val": results, "allreduce": bandwidth}))
    del model, sharded  # as Session.close: free FSDP's process group before exit
    gc.collect()
    shutdown(wait=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
