"""Validation and compilation: a compiled model is compiled a bounded number of times
(training steps, validation passes with a last, shorter batch, and a second validation add
no graphs), and validation runs without autograd."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch._dynamo.testing import CompileCounter

from gpt2repro.data.loader import eval_batches
from gpt2repro.distributed import DistInfo
from gpt2repro.evaluation.val import split_loss
from gpt2repro.model import GPT, GPTConfig

BATCH, SEQ = 4, 16
TOKENS = SEQ * (5 * BATCH + 3)  # five full batches and a last one of three


def test_validation_does_not_recompile_on_each_call(corpus: SimpleNamespace) -> None:
    sizes = {x.shape[0] for x, _ in eval_batches(corpus.data_dir, "val", BATCH, SEQ, TOKENS)}
    assert sizes == {BATCH, 3}, sizes
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=300, block_size=SEQ, n_layer=1, n_head=2, n_embd=16))
    counter = CompileCounter()
    model = torch.compile(gpt, backend=counter)
    x = torch.randint(0, 300, (BATCH, SEQ))
    cpu, one = torch.device("cpu"), DistInfo()

    model(x, x).backward()
    first = split_loss(model, corpus.data_dir, "val", BATCH, SEQ, TOKENS, cpu, "fp32", one)
    settled = counter.frame_count
    for _ in range(3):
        model(x, x).backward()
        again = split_loss(model, corpus.data_dir, "val", BATCH, SEQ, TOKENS, cpu, "fp32", one)
        assert again == first
    assert counter.frame_count == settled, f"{counter.frame_count - settled} recompilations"
    # train mode, eval mode, and eval mode for the shorter last batch: at most three graphs
    assert settled <= 3, settled


def test_validation_keeps_no_autograd_graph(corpus: SimpleNamespace) -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=300, block_size=SEQ, n_layer=1, n_head=2, n_embd=16))
    seen: list[bool] = []
    gpt.register_forward_hook(lambda *_: seen.append(torch.is_grad_enabled()))
    cpu, one = torch.device("cpu"), DistInfo()
    split_loss(gpt, corpus.data_dir, "val", BATCH, SEQ, TOKENS, cpu, "fp32", one)
    assert seen and not any(seen)  # a graph per batch would keep every batch's activations
