"""wrap_model puts DDP inside torch.compile, and grad_sync still finds it to skip the
all-reduce on accumulation micro-steps; DDP's gradients are views of its buckets. Under
FSDP the blocks and the head's loss compile in place."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as torch_dist
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt2repro.checkpoint import unwrap
from gpt2repro.config import OptimConfig
from gpt2repro.distributed import DistInfo
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import full_tensor, grad_sync, shard_model, wrap_model, zero_grads
from gpt2repro.training.optimizer import build_optimizer


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    """A one-process gloo group stands in for the job; the tests' DistInfo says "several ranks"."""
    torch_dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    torch_dist.destroy_process_group()


@pytest.mark.usefixtures("process_group")
def test_ddp_is_inside_compile_and_no_sync_reaches_it() -> None:
    gpt = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16))
    model = wrap_model(gpt, torch.device("cpu"), compile=True, dist=DistInfo(world_size=2))
    inner = getattr(model, "_orig_mod", None)
    assert isinstance(inner, DDP) and unwrap(model) is gpt
    with grad_sync(model, sync=False):
        assert not inner.require_backward_grad_sync
    assert inner.require_backward_grad_sync


@pytest.mark.usefixtures("process_group")
def test_ddp_gradients_stay_bucket_views_through_accumulation() -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16))
    model = wrap_model(gpt, torch.device("cpu"), compile=False, dist=DistInfo(world_size=2))
    opt = build_optimizer(gpt, OptimConfig(), torch.device("cpu"))
    x = torch.randint(0, 64, (2, 8))
    for step in range(3):
        for micro in range(2):  # as train_step: the first micro-step under no_sync
            with grad_sync(model, sync=micro == 1):
                model(x, x).backward()
            # From the second step on, every micro-step accumulates into the buckets.
            if step > 0 or micro == 1:
                assert all(
                    p.grad is not None and p.grad._base is not None for p in gpt.parameters()
                )
        opt.step()
        zero_grads(model, opt)


@pytest.mark.usefixtures("process_group")
def test_fsdp_compiles_blocks_and_head_loss_and_trains_like_eager() -> None:
    cfg = GPTConfig(vocab_size=64, block_size=8, n_layer=1, n_head=2, n_embd=16)
    torch.manual_seed(0)
    eager = GPT(cfg)
    sharded = GPT(cfg)
    sharded.load_state_dict(eager.state_dict())
    shard_model(sharded, torch.device("cpu"), compile=True, dist=DistInfo(), dtype="fp32")
    compiled = [m for m in sharded.modules() if getattr(m, "_compiled_call_impl", None)]
    assert compiled == [sharded.transformer.h[0], sharded.head_loss]
    x = torch.randint(0, 64, (2, 8))
    loss, ref = sharded(x, x), eager(x, x)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for (name, p), q in zip(sharded.named_parameters(), eager.parameters(), strict=True):
        assert p.grad is not None
        torch.testing.assert_close(full_tensor(p.grad), q.grad, msg=name)
