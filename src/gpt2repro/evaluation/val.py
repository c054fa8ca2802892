"""Validation loss, perplexity and bits-per-byte on a prepared split.

Bits-per-byte divides the total loss in bits by the UTF-8 bytes of the text it covers,
so models with different tokenizers compare fairly. Over a token budget smaller than
the split we use the split's bytes-per-token ratio from the manifest, whose token and
byte counts are first checked against the shards (`data.verify.check_split_counts`, once
per process): a wrong count would scale the result without any other sign.

With several ranks the batches are dealt out round-robin (`distributed.round_robin`) and
the per-batch sums all-reduced, so the result is the one-process number: the same
batches, the same per-batch losses, only summed in another order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from gpt2repro.data.loader import eval_batches, to_device
from gpt2repro.data.verify import check_split_counts
from gpt2repro.distributed import DistInfo, all_reduce_sum, round_robin
from gpt2repro.parallelize import autocast, is_sharded

if TYPE_CHECKING:
    from gpt2repro.tokenizer import Tokenizer


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
    *,
    tokenizer: Tokenizer | None = None,
) -> dict[str, float]:
    """Mean next-token loss over the split's first `max_tokens` tokens, shared out over ranks.

    `tokenizer` (the dataset's) counts the split's bytes; by default the manifest's spec.
    """
    # Before any forward pass: a dataset whose counts are wrong fails in seconds.
    counts = check_split_counts(data_dir, split, tokenizer)
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = torch.zeros((), device=device, dtype=torch.float64)
    # Every rank walks the one-process batch sequence (on the CPU: cheap) and runs its share.
    batches = eval_batches(data_dir, split, batch_size, seq_len, max_tokens)
    for batch in round_robin(batches, dist):
        if batch is None:  # out of batches while the others finish theirs
            if is_sharded(model):  # FSDP forwards are collective: join with a throwaway one
                with autocast(device, dtype):
                    model(torch.zeros((1, seq_len), dtype=torch.long, device=device))
            continue
        # Batches stay on the CPU until this rank's turn (round_robin skips the others').
        x, y = (to_device(t, device) for t in batch)
        with autocast(device, dtype):
            loss = model(x, y)
        total += loss.double() * y.numel()
        count += y.numel()
    model.train(was_training)
    total, count = all_reduce_sum(total, dist), all_reduce_sum(count, dist)
    if count.item() == 0:
        raise ValueError(
            f"{data_dir}: split {split!r} has no complete window of {seq_len + 1} tokens."
        )
    loss_value = (total / count).item()
    return {
        "loss": loss_value,
        "ppl": math.exp(min(loss_value, 700.0)),
        "bpb": bits_per_byte(loss_value, counts["tokens"], counts["bytes"]),
        "tokens": int(count.item()),
    }
