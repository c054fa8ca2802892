"""Validation loss, perplexity and bits-per-byte on a prepared split.

Bits-per-byte divides the total loss in bits by the UTF-8 bytes of the text it covers,
so models with different tokenizers compare fairly. Over a token budget smaller than
the split we use the split's bytes-per-token ratio from the manifest.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from gpt2repro.data.loader import eval_batches, read_manifest
from gpt2repro.distributed import DistInfo, all_reduce_mean
from gpt2repro.parallelize import autocast


def bits_per_byte(loss_nats: float, tokens: int, nbytes: int) -> float:
    """Mean loss in nats/token -> total bits / total bytes."""
    return loss_nats / math.log(2) * tokens / nbytes


@torch.no_grad()
def split_loss(
    model: torch.nn.Module,
    data_dir: Path,
    split: str,
    batch_size: int,
    seq_len: int,
    max_tokens: int | None,
    device: torch.device,
    dtype: str,
    dist: DistInfo,
) -> dict[str, float]:
    """Mean next-token loss over the split's first `max_tokens` tokens, averaged over ranks."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    for x, y in eval_batches(
        data_dir,
        split,
        batch_size,
        seq_len,
        max_tokens,
        rank=dist.rank,
        world_size=dist.world_size,
        device=device,
    ):
        with autocast(device, dtype):
            loss = model(x, y)
        total += loss.double() * y.numel()
        count += y.numel()
    model.train(was_training)
    # Sum over ranks (mean * world) so unequal shares still weight every token once.
    total = all_reduce_mean(total, dist) * dist.world_size
    count = all_reduce_mean(count, dist) * dist.world_size
    if count.item() == 0:
        raise ValueError(
            f"{data_dir}: split {split!r} has no complete window of {seq_len + 1} tokens."
        )
    loss_value = (total / count).item()
    manifest = read_manifest(data_dir)["splits"][split]
    return {
        "loss": loss_value,
        "ppl": math.exp(min(loss_value, 700.0)),
        "bpb": bits_per_byte(loss_value, manifest["tokens"], manifest["bytes"]),
        "tokens": int(count.item()),
    }
