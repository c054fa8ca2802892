"""The CUDA fast path, checked on a real GPU: `pytest -m gpu tests/gpu` (skipped without one).

Everything here has a CPU counterpart in the default suite; these tests prove what only a GPU
can show: bf16/TF32/fused-AdamW defaults, no host synchronisation inside the accumulation
loop, the flash SDPA kernel accepting the model's layout, inductor (Triton) matching eager
without recompiling, the chunked loss's memory on the CUDA allocator, the KV cache.
`benchmarks/gpu.sh` runs them together with the GPU benchmarks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import gpt2repro.training.loop as train_module
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
from gpt2repro.data.loader import TokenLoader
from gpt2repro.distributed import DistInfo
from gpt2repro.evaluation.val import split_loss
from gpt2repro.loss import linear_cross_entropy
from gpt2repro.metrics import datasheet_peak, measure_matmul_peak
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.parallelize import autocast, resolve_dtype
from gpt2repro.sampling import SamplingConfig, generate
from gpt2repro.train_state import load_train_state
from gpt2repro.training.optimizer import apply_schedule, build_optimizer
from gpt2repro.training.setup import build_model, build_trainee, open_inputs, open_runtime
from gpt2repro.training.step import optimizer_step, train_step

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def restore_backend_flags() -> Iterator[None]:
    """Training turns TF32 on for the process; each test starts from what it found."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@contextlib.contextmanager
def no_host_sync() -> Iterator[None]:
    """Make any synchronising CUDA call (.item(), a pageable copy, ...) raise."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def tiny_run(corpus: SimpleNamespace, out_dir: Path, **run: object) -> TrainConfig:
    return TrainConfig(
        model=GPTConfig(vocab_size=300, block_size=64, n_layer=2, n_head=4, n_embd=128),
        data=DataConfig(
            dataset=str(corpus.data_dir), data_root=corpus.root / "data", tokenizer=corpus.tokenizer
        ),
        optim=OptimConfig(lr=3e-3, min_lr=3e-4, warmup_steps=5),
        # four micro-batches per step, so the accumulation loop really loops
        batch=BatchConfig(tokens_per_step=4 * 8 * 64, micro_batch=8, seq_len=64),
        run=RunConfig(max_steps=30, device="cuda", out_dir=out_dir, seed=3, **run),  # type: ignore[arg-type]
        eval=EvalConfig(interval=15, val_tokens=4096, sample_interval=0, sample_tokens=8),
        checkpoint=CheckpointConfig(interval=0),
        log=LogConfig(interval=10, tensorboard=False),
    )


@pytest.mark.parametrize("compile", [False, True])
def test_training_on_cuda_uses_the_fast_path_without_host_syncs(
    corpus: SimpleNamespace, tmp_path: Path, compile: bool
) -> None:
    # The loop's own parts, as train() builds them, stepped here: the first steps allocate
    # (and compile); from then on neither the step nor the optimizer may synchronise.
    cfg = tiny_run(corpus, tmp_path / "parts", compile=compile)
    rt = open_runtime(cfg)
    cfg, inputs = open_inputs(cfg, rt)
    trainee = build_trainee(cfg, build_model(cfg, rt), rt)
    b = cfg.batch
    loader = TokenLoader(
        inputs.data_dir, "train", b.micro_batch, b.seq_len, seed=cfg.run.seed, device=rt.device
    )
    accum = cfg.grad_accum_steps(1)
    strict = 0
    for step in range(cfg.run.max_steps):
        apply_schedule(trainee.optimizer, step, cfg.optim, cfg.run.max_steps)
        with no_host_sync() if step >= 3 else contextlib.nullcontext():
            loss, _ = train_step(
                trainee.model, trainee.optimizer, trainee.scaler, loader.next_batch, accum,
                rt.device, rt.dtype, cfg.optim.grad_clip,
            )  # fmt: skip
            optimizer_step(trainee.model, trainee.optimizer, trainee.scaler)
        strict += step >= 3
    assert strict == 27 and loss.item() < 5.0  # ln(300) = 5.7 at the start: it learned
    result = train_module.train(tiny_run(corpus, tmp_path / "run", compile=compile))
    assert result.stopped_by == "finished" and result.final_val["loss"] < 5.0
    assert resolve_dtype("auto", CUDA) == "bf16"
    assert torch.backends.cuda.matmul.allow_tf32


def reference_adamw(model: GPT) -> torch.optim.AdamW:
    """torch's AdamW with GPT-2's groups built by name: decay on the embeddings and Linear
    weights, none on biases and LayerNorm parameters; the plain (unfused) kernel."""
    decay: list[torch.nn.Parameter] = []
    plain: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():  # the tied head appears once
        no_decay = name.endswith(".bias") or ".ln_" in name
        (plain if no_decay else decay).append(p)
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, fused=False)


def test_fused_adamw_on_cuda_equals_the_reference_step() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_embd=32)).to(CUDA)
    ref = GPT(model.config).to(CUDA)
    ref.load_state_dict(model.state_dict())
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8)
    fused = build_optimizer(model, cfg, CUDA)
    plain = reference_adamw(ref)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    index = {id(p): i for i, p in enumerate(model.parameters())}
    ref_index = {id(p): i for i, p in enumerate(ref.parameters())}
    for ours, theirs in zip(fused.param_groups, plain.param_groups, strict=True):
        assert ours["weight_decay"] == theirs["weight_decay"]
        assert {index[id(p)] for p in ours["params"]} == {
            ref_index[id(p)] for p in theirs["params"]
        }
    x = torch.randint(0, 64, (4, 16), device=CUDA)
    for _ in range(5):
        model(x, x).backward()  # the same gradients for both, so only the update can differ
        for p, q in zip(model.parameters(), ref.parameters(), strict=True):
            q.grad = None if p.grad is None else p.grad.clone()
        for opt in (fused, plain):
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), b in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_fp16_training_with_grad_scaler_tracks_fp32(
    corpus: SimpleNamespace, tmp_path: Path
) -> None:
    """fp16 end to end (refused on the CPU): scaled backward, unscale before clipping,
    overflow skips; the loss follows the fp32 (TF32) run's and the scaler is checkpointed."""
    runs = {
        dtype: train_module.train(tiny_run(corpus, tmp_path / dtype, dtype=dtype, compile=False))
        for dtype in ("fp32", "fp16")
    }
    for result in runs.values():
        assert result.stopped_by == "finished" and result.checkpoint is not None
    assert runs["fp32"].final_val["loss"] < 5.0  # ln(300) = 5.7 at the start: it learned
    assert abs(runs["fp16"].final_val["loss"] - runs["fp32"].final_val["loss"]) < 0.05
    losses = {dtype: train_losses(tmp_path / dtype) for dtype in runs}
    assert sorted(losses["fp16"]) == sorted(losses["fp32"]) == [10, 20, 30]
    assert all(abs(losses["fp16"][k] - losses["fp32"][k]) < 0.05 for k in losses["fp32"])
    assert losses["fp16"] != losses["fp32"]  # fp16 really ran
    scaler = load_train_state(runs["fp16"].checkpoint)["scaler"]  # type: ignore[arg-type]
    assert scaler["scale"] > 1.0 and scaler["growth_interval"] == 2000, scaler
    assert load_train_state(runs["fp32"].checkpoint)["scaler"] == {}  # type: ignore[arg-type]


def train_losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r["kind"] == "train"}


def test_flash_attention_serves_the_model_layout() -> None:
    """Only the flash kernel allowed: the model's (B, nh, T, hs) views must be accepted."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=128, block_size=256, n_layer=2, n_head=4, n_embd=256))
    model = model.to(CUDA)
    x = torch.randint(0, 128, (2, 256), device=CUDA)
    with autocast(CUDA, "bf16"):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = model(x, x)
        flash.backward()
        with sdpa_kernel(SDPBackend.MATH):
            math = model(x, x)
    torch.testing.assert_close(flash, math, rtol=2e-2, atol=2e-2)


def test_compiled_model_matches_eager_and_validation_compiles_once(
    corpus: SimpleNamespace,
) -> None:
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(vocab_size=300, block_size=32, n_layer=2, n_head=2, n_embd=64)).to(CUDA)
    counter = CompileCounterWithBackend("inductor")
    model = torch.compile(gpt, backend=counter)
    x = torch.randint(0, 300, (4, 32), device=CUDA)
    with autocast(CUDA, "bf16"):
        torch.testing.assert_close(model(x, x), gpt(x, x), rtol=2e-2, atol=2e-2)
    one = DistInfo()
    first = split_loss(model, corpus.data_dir, "val", 4, 32, 32 * 23, CUDA, "bf16", one)
    settled = counter.frame_count
    again = split_loss(model, corpus.data_dir, "val", 4, 32, 32 * 23, CUDA, "bf16", one)
    assert again == first and counter.frame_count == settled


def test_chunked_loss_peak_memory_and_gradients_against_the_naive_path() -> None:
    """Issue 7: at the same micro-batch, <= 60% of the naive path's peak, equal within bf16."""
    torch.manual_seed(0)
    n, c, vocab = 8 * 1024, 768, 50257
    x0 = torch.randn(n, c, device=CUDA)  # ln_f's output: fp32 under autocast
    w0 = torch.randn(50304, c, device=CUDA) * 0.02
    t = torch.randint(0, vocab, (n,), device=CUDA)

    def run(chunked: bool) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, w = x0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with autocast(CUDA, "bf16"):
            if chunked:
                loss = linear_cross_entropy(x, w, t, vocab)
            else:
                loss = F.cross_entropy((x @ w.t())[:, :vocab].float(), t)
        loss.backward()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        assert x.grad is not None and w.grad is not None
        return peak, loss.detach(), x.grad, w.grad

    naive, chunked = run(False), run(True)
    assert chunked[0] <= 0.6 * naive[0], (chunked[0], naive[0])
    torch.testing.assert_close(chunked[1], naive[1], rtol=1e-2, atol=1e-2)
    for a, b in zip(chunked[2:], naive[2:], strict=True):
        assert (a.float() - b.float()).abs().max() <= 0.02 * b.float().abs().max()


def test_kv_cache_generation_equals_recompute_on_cuda() -> None:
    # Exact token equality over near-ties: full fp32 matmuls, whatever shapes cuBLAS sees.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=256, block_size=64, n_layer=2, n_head=4, n_embd=128))
    model = model.to(CUDA).eval()
    prompt = torch.randint(0, 256, (2, 5), device=CUDA)
    cfg = SamplingConfig(max_new_tokens=40, temperature=0.0)
    cached = generate(model, prompt, cfg, use_cache=True)
    fresh = generate(model, prompt, cfg, use_cache=False)
    assert torch.equal(cached, fresh)


def test_mfu_has_a_peak_to_divide_by_on_this_gpu() -> None:
    """The datasheet's on GPUs it knows (MFU is also reported against it), else a measured one."""
    name = torch.cuda.get_device_name(CUDA)
    sheet = datasheet_peak(CUDA, "bf16")
    if any(k in name for k in ("H100", "H200", "A100")):
        assert sheet is not None and sheet > 300e12, (name, sheet)
    measured = measure_matmul_peak(CUDA, torch.bfloat16, seconds=0.5, trials=2)
    assert measured > 1e12
    if sheet is not None:
        assert measured < 1.1 * sheet, (measured, sheet)  # a timer that missed the GPU's work
