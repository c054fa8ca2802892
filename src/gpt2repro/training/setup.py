"""What a training run builds before its first step, one explicit part per step.

`train` (loop.py) calls these in order: the runtime (device, process group, precision), the
resume decision (run_dir.py), the inputs (data prepared if missing, found and checked; the
tokenizer), the trainee (model, optimizer, loss scaler) and the outputs (run directory,
metric sinks). Whatever can fail is checked here, before the first step: a bad input must
not cost a run its training time.
"""

from __future__ import annotations

import gc
import json
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from gpt2repro.config import TrainConfig
from gpt2repro.data.loader import Windows, eval_batches, read_manifest
from gpt2repro.data.locate import locate
from gpt2repro.data.verify import check_split_counts
from gpt2repro.distributed import DistInfo, init_distributed, print0, shutdown
from gpt2repro.evaluation.hellaswag import load_examples
from gpt2repro.metrics import (
    MetricsWriter,
    datasheet_peak,
    flops_per_token,
    measure_matmul_peak,
)
from gpt2repro.model import GPT
from gpt2repro.parallelize import (
    DTYPES,
    check_parallel,
    configure_backends,
    resolve_dtype,
    wrap_model,
)
from gpt2repro.run_dir import RunDir
from gpt2repro.runtime import resolve_device, seed_everything
from gpt2repro.tokenizer import Tokenizer
from gpt2repro.training.ensure_data import prepare_missing
from gpt2repro.training.optimizer import build_optimizer


@dataclass(frozen=True)
class Runtime:
    """Where the run computes."""

    device: torch.device
    dtype: str
    """The resolved compute dtype: fp32, bf16 or fp16."""
    dist: DistInfo


@dataclass(frozen=True)
class Inputs:
    """What the run reads."""

    data_dir: Path
    tokenizer: Tokenizer
    hellaswag: list[dict[str, Any]] | None
    """The HellaSwag examples scored at each evaluation (None: eval.hellaswag is off)."""


@dataclass
class Trainee:
    """What trains: the model as trained (possibly compiled, DDP-wrapped or FSDP-sharded;
    checkpoint.unwrap gets the GPT), its optimizer and its loss scaler (fp16 only)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler


@dataclass(frozen=True)
class Outputs:
    """Where the run writes, and what its MFU divides by."""

    run_dir: RunDir
    writer: MetricsWriter
    config_json: str
    """The resolved config, as written to config.json and into every checkpoint."""
    flops_per_token: float
    peak_flops: float


def open_runtime(cfg: TrainConfig) -> Runtime:
    """Device, process group and precision; the config checked for this world size."""
    device = resolve_device(cfg.run.device)
    dist = init_distributed(device)
    cfg.validate(dist.world_size)
    for note in cfg.warnings():
        print0(dist, f"warning: {note}")
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    dtype = resolve_dtype(cfg.run.dtype, device)
    check_parallel(cfg.run.parallel, dtype)
    if cfg.optim.optimizer == "muon" and dtype == "fp16":
        raise ValueError(
            "optim.optimizer=muon is not supported with fp16 (run.dtype=auto chose it on this "
            "GPU): pass --run.dtype fp32 or use optim.optimizer=adamw."
        )
    configure_backends(device)
    return Runtime(device, dtype, dist)


def open_inputs(cfg: TrainConfig, rt: Runtime) -> tuple[TrainConfig, Inputs]:
    """The data (prepared if missing, found, its counts checked), the tokenizer and the
    HellaSwag examples; the config comes back with the tokenizer's vocabulary size."""
    hellaswag = load_hellaswag(cfg)
    prepare_missing(cfg.data, rt.dist)
    d = cfg.data
    data_dir, tokenizer = locate(d.data_root, d.dataset, d.tokenizer, cfg.init.source)
    check_val_split(cfg, data_dir, rt.dist, tokenizer)
    manifest = read_manifest(data_dir)
    if cfg.model.vocab_size != tokenizer.vocab_size:
        print0(
            rt.dist,
            f"note: model.vocab_size set to {tokenizer.vocab_size} to match tokenizer "
            f"{tokenizer.identifier}",
        )
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=tokenizer.vocab_size))
    if manifest.get("vocab_size") not in (None, tokenizer.vocab_size):
        raise ValueError(
            f"{data_dir}: prepared with a {manifest['vocab_size']}-token vocabulary, "
            f"but the tokenizer has {tokenizer.vocab_size}. Re-run `gpt2repro prepare`."
        )
    check_sample_prompt(cfg, tokenizer)
    return cfg, Inputs(data_dir, tokenizer, hellaswag)


def build_model(cfg: TrainConfig, rt: Runtime) -> GPT:
    """The GPT, built on the meta device (shapes only, no memory), then materialised on the
    run's device and initialised from the run's seed."""
    with torch.device("meta"):
        gpt = GPT(cfg.model)
    gpt.to_empty(device=rt.device)
    if cfg.model.tie_embeddings:
        gpt.lm_head.weight = gpt.transformer.wte.weight  # to_empty() broke the tie
    seed_everything(cfg.run.seed)  # the same on every rank: FSDP shards each rank's own copy
    # torch's default init first, in construction order, as a model built directly on the
    # device would draw it: the seed's stream then reaches init_weights at the same point,
    # so a seed gives the same weights (and results) as before the meta-device build.
    for module in gpt.modules():
        reset = getattr(module, "reset_parameters", None)
        if module is not gpt and callable(reset):
            reset()
    gpt.init_weights()
    return gpt


def build_trainee(cfg: TrainConfig, gpt: GPT, rt: Runtime) -> Trainee:
    """`gpt` wrapped for the run (DDP or FSDP across ranks, compiled where asked), its
    optimizer (built after wrapping: FSDP swaps the parameters) and loss scaler."""
    compile_model = cfg.run.compile if cfg.run.compile is not None else rt.device.type == "cuda"
    model = wrap_model(gpt, rt.device, compile_model, rt.dist, cfg.run.parallel, rt.dtype)
    optimizer = build_optimizer(gpt, cfg.optim, rt.device)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == "fp16")
    if rt.dist.rank > 0:
        # Other ranks draw their own dropout masks; rank 0 goes on as a single process would.
        seed_everything(cfg.run.seed + rt.dist.rank)
    n = gpt.num_params()
    print0(
        rt.dist,
        f"model: {n:,} parameters | device {rt.device} | dtype {rt.dtype} | "
        f"compile {compile_model} | world size {rt.dist.world_size}"
        f"{f' ({cfg.run.parallel})' if rt.dist.enabled else ''} | "
        f"accumulation {cfg.grad_accum_steps(rt.dist.world_size)}",
    )
    return Trainee(model, optimizer, scaler)


def open_outputs(
    cfg: TrainConfig, run_dir: RunDir, point: tuple[Path, int] | None, rt: Runtime, gpt: GPT
) -> Outputs:
    """The run directory prepared (an earlier run moved aside), the metric sinks (a resumed
    run's later TensorBoard points hidden from its step on) and the FLOP/s MFU divides by."""
    run_dir.prepare(point[0] if point else None, rt.dist)
    wandb = cfg.log.wandb_project if cfg.log.wandb and rt.dist.is_main else None
    tensorboard = run_dir.tensorboard if cfg.log.tensorboard and rt.dist.is_main else None
    purge = point[1] + 1 if point is not None else None  # what the resumed run logs again
    writer = MetricsWriter(
        run_dir.metrics, run_dir.samples, tensorboard, wandb, asdict(cfg), purge_step=purge
    )
    fpt = flops_per_token(cfg.model, cfg.batch.seq_len, gpt.num_params())
    peak, peak_source = peak_flops_for(rt.device, rt.dtype)
    print0(rt.dist, f"mfu: against {peak / 1e12:.3g} TFLOP/s per device, {peak_source}")
    config_json = json.dumps(asdict(cfg), indent=2, default=str)
    return Outputs(run_dir, writer, config_json, fpt, peak)


def write_run_records(out: Outputs, rt: Runtime) -> None:
    """config.json and environment.json (rank 0). Called once the run has started: a resume
    that is refused must leave the records of the run it would have continued as they were."""
    if rt.dist.is_main:
        out.run_dir.config.write_text(out.config_json + "\n")
        out.run_dir.environment.write_text(
            json.dumps(environment_record(rt.device, rt.dist), indent=2) + "\n"
        )


def close(trainee: Trainee, out: Outputs) -> None:
    """End of the run: its parts are unusable afterwards."""
    out.writer.close()
    # DDP and FSDP hold the process group inside reference cycles. Left to the garbage
    # collector at interpreter exit, gloo's threads die mid-teardown and abort the
    # process (torch 2.11): free them while the interpreter is whole.
    del trainee.model, trainee.optimizer
    gc.collect()
    shutdown(wait=True)


def _git_revision() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None
    except OSError:
        return None


def environment_record(device: torch.device, dist: DistInfo) -> dict[str, Any]:
    """Code version, package versions and hardware, written next to every run's metrics."""
    packages: dict[str, str | None] = {}
    for name in ("gpt2repro", "torch", "numpy", "tiktoken", "tokenizers", "safetensors"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    hw: dict[str, Any] = {"device": str(device), "cpu": platform.processor() or platform.machine()}
    hw |= {"threads": torch.get_num_threads(), "world_size": dist.world_size}
    if device.type == "cuda":
        hw["gpu"] = torch.cuda.get_device_name(device)
    return {
        "git_revision": _git_revision(),
        "python": sys.version,
        "packages": packages,
        "hardware": hw,
    }


def peak_flops_for(device: torch.device, dtype: str) -> tuple[float, str]:
    """The FLOP/s that MFU divides by, and where it comes from (for the log): the datasheet
    peak on known GPUs, otherwise a matmul measured now (CPU, unknown GPUs)."""
    table = datasheet_peak(device, "tf32" if dtype == "fp32" else dtype)
    if table is not None:
        return table, "the GPU's datasheet"
    # A shared VM's matrix units can run at a third of their speed for minutes at a time
    # (benchmarks/results); `gpt2repro bench train` divides by the fastest window instead.
    measured = measure_matmul_peak(device, DTYPES[dtype], seconds=1.0, trials=5)
    return measured, f"a {dtype} matmul measured at start-up (varies with the machine's load)"


def load_hellaswag(cfg: TrainConfig) -> list[dict[str, Any]] | None:
    """The examples, read (or downloaded) at start-up so a missing file fails before step 1."""
    if not cfg.eval.hellaswag:
        return None
    try:
        return load_examples(cfg.eval.hellaswag_path, cfg.eval.hellaswag_limit)
    except ConnectionError as e:  # its advice names `eval`'s flag; train's is longer
        message = str(e).replace("--hellaswag-path", "--eval.hellaswag-path")
        raise ConnectionError(f"--eval.hellaswag: {message}") from None


def check_val_split(cfg: TrainConfig, data_dir: Path, dist: DistInfo, tokenizer: Tokenizer) -> None:
    """Every evaluation reads the same windows: make sure there are enough, now, and that the
    manifest's counts, which bits per byte divides by, agree with the shards."""
    check_split_counts(data_dir, "val", tokenizer)
    b = cfg.batch
    # validate() made eval.val_tokens cover a window per rank: only the split can be short.
    windows = Windows(data_dir, "val", b.seq_len).total
    if windows < dist.world_size:
        raise ValueError(
            f"{data_dir}: the val split is too small, {windows} window(s) of --batch.seq-len "
            f"{b.seq_len} + 1 tokens for {dist.world_size} rank(s). Lower --batch.seq-len, or "
            f"prepare more data or a larger --val-fraction (`gpt2repro prepare ... --val-fraction`)."
        )
    eval_batches(
        data_dir,
        "val",
        b.micro_batch,
        b.seq_len,
        cfg.eval.val_tokens,
        rank=dist.rank,
        world_size=dist.world_size,
    )


def check_sample_prompt(cfg: TrainConfig, tokenizer: Tokenizer) -> None:
    """Samples are written at the end of the run: a prompt the model cannot take fails now."""
    tokens = len(tokenizer.encode(cfg.eval.sample_prompt))
    if tokens > cfg.model.block_size:
        raise ValueError(
            f"eval.sample_prompt is {tokens} tokens, longer than model.block_size="
            f"{cfg.model.block_size}. Shorten --eval.sample-prompt."
        )
