"""What a run reports as it goes: validation (and HellaSwag) at each evaluation, samples,
and one log line and metrics record per log interval. Rank 0 writes; evaluations and FSDP
sampling are collectives, so every rank calls them."""

from __future__ import annotations

import time

import torch

from gpt2repro.checkpoint import unwrap
from gpt2repro.config import TrainConfig
from gpt2repro.distributed import print0
from gpt2repro.evaluation.hellaswag import hellaswag_eval
from gpt2repro.evaluation.val import split_loss
from gpt2repro.metrics import MetricsWriter, peak_memory_bytes
from gpt2repro.parallelize import autocast, is_sharded
from gpt2repro.sampling import SamplingConfig, generate
from gpt2repro.training.setup import Inputs, Outputs, Runtime
from gpt2repro.training.state import TrainState


def evaluate(
    cfg: TrainConfig,
    model: torch.nn.Module,
    inputs: Inputs,
    rt: Runtime,
    writer: MetricsWriter,
    state: TrainState,
) -> dict[str, float]:
    """Validation loss and bits-per-byte on the fixed token budget (and HellaSwag if on)."""
    b = cfg.batch
    result = split_loss(
        model,
        inputs.data_dir,
        "val",
        b.micro_batch,
        b.seq_len,
        cfg.eval.val_tokens,
        rt.device,
        rt.dtype,
        rt.dist,
        tokenizer=inputs.tokenizer,
    )
    if rt.dist.is_main:
        # "tokens" is training progress in every record (the x axis of loss_tokens.png);
        # how many validation tokens were scored is "val_tokens".
        scored = {"val_tokens": result["tokens"]} | {
            k: v for k, v in result.items() if k != "tokens"
        }
        progress = {
            "step": state.step,
            "tokens": state.tokens,
            "train_seconds": state.train_seconds,
        }
        writer.write({"kind": "val", **progress, **scored})
        print0(
            rt.dist,
            f"step {state.step:>6} | val loss {result['loss']:.4f} | val bpb {result['bpb']:.4f}",
        )
    if inputs.hellaswag is not None:
        hs = hellaswag_eval(
            model, inputs.hellaswag, inputs.tokenizer, rt.device, rt.dtype, rt.dist, progress=False
        )
        if rt.dist.is_main:
            writer.write({"step": state.step, "kind": "hellaswag", "tokens": state.tokens, **hs})
            print0(rt.dist, f"step {state.step:>6} | hellaswag acc_norm {hs['acc_norm']:.4f}")
    return result


def write_samples(
    cfg: TrainConfig,
    model: torch.nn.Module,
    inputs: Inputs,
    rt: Runtime,
    writer: MetricsWriter,
    state: TrainState,
    num: int = 2,
) -> None:
    """Rank 0 writes samples; under FSDP every rank generates with it (each forward is collective)."""
    if not (rt.dist.is_main or is_sharded(model)):
        return
    gpt = unwrap(model)  # uncompiled: variable-length decoding would recompile each call
    tok = inputs.tokenizer
    prompt = tok.encode(cfg.eval.sample_prompt) or [tok.eot_id]
    idx = torch.tensor([prompt] * num, device=rt.device)
    gen = torch.Generator(device=rt.device).manual_seed(cfg.run.seed)
    sampling = SamplingConfig(max_new_tokens=cfg.eval.sample_tokens, temperature=0.8, top_k=200)
    # FSDP compiles blocks in place, so unwrap() cannot skip them: run them eagerly instead.
    with autocast(rt.device, rt.dtype), torch.compiler.set_stance("force_eager"):
        out = generate(gpt, idx, sampling, generator=gen)
    if rt.dist.is_main:
        writer.write_samples(state.step, [tok.decode(row) for row in out.tolist()])


def log_train(
    cfg: TrainConfig,
    rt: Runtime,
    out: Outputs,
    state: TrainState,
    loss_avg: float,
    norm: float,
    lr: float,
    since: tuple[float, int, float],
) -> None:
    """One line and one JSONL record per log interval (rank 0); `loss_avg` is the mean over
    ranks; `since` is (wall clock, steps, training seconds) at the previous log.

    Throughput and MFU count the interval's training steps only, not the evaluations,
    samples and checkpoints in it; the ETA counts them all (wall time).
    """
    t_log, steps, train_s_log = since
    steps = state.step - steps
    dt = max(time.perf_counter() - t_log, 1e-9)
    train_dt = state.train_seconds - train_s_log
    tok_s = steps * cfg.batch.tokens_per_step / max(train_dt, 1e-9)
    world = rt.dist.world_size
    mfu = tok_s * out.flops_per_token / out.peak_flops / world if out.peak_flops else 0.0
    remaining = (cfg.run.max_steps - state.step) * dt / steps
    rec = {
        "step": state.step,
        "kind": "train",
        "loss": loss_avg,
        "lr": lr,
        "grad_norm": norm,
        "tokens": state.tokens,
        "tokens_per_s": tok_s,
        "mfu": mfu,
        "skipped": state.skipped_steps,
        "overflow_steps": state.overflow_steps,
        "mem_gb": peak_memory_bytes(rt.device) / 1e9,
        "eta_s": remaining,
    }
    if rt.dist.is_main:
        out.writer.write(rec)
        print(
            f"step {state.step:>6}/{cfg.run.max_steps} | loss {loss_avg:.4f} | lr {lr:.2e} | "
            f"norm {norm:.3f} | {tok_s:,.0f} tok/s | mfu {100 * mfu:.1f}% | "
            f"mem {rec['mem_gb']:.2f} GB | eta {remaining / 60:.1f} min",
            flush=True,
        )
