"""Everything a training run sets up before its first step, gathered in one `Session`.

Device and process group, data (prepared if missing), tokenizer, HellaSwag examples,
model, compile and DDP/FSDP wrapping, optimizer, grad scaler, run directory records and
metric sinks. Whatever can fail is checked here, before the first step: a bad input must
not cost a run its training time.

A new run never writes into an earlier run's directory: that run is moved aside to
`<out_dir>.1` (`.2`, ...) first. Only resuming (`checkpoint.resume`) continues a directory.
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

from gpt2repro import checkpoint as ckpt
from gpt2repro.atomic import move_aside, recover_directories
from gpt2repro.config import TrainConfig
from gpt2repro.data.loader import Windows, eval_batches, read_manifest
from gpt2repro.data.verify import check_split_counts
from gpt2repro.distributed import DistInfo, init_distributed, print0, shutdown, wait_for_main
from gpt2repro.evaluation.hellaswag import load_examples
from gpt2repro.metrics import (
    MetricsWriter,
    datasheet_peak,
    flops_per_token,
    measure_matmul_peak,
    peak_memory_bytes,
)
from gpt2repro.model import GPT
from gpt2repro.parallelize import (
    DTYPES,
    check_parallel,
    configure_backends,
    resolve_dtype,
    wrap_model,
)
from gpt2repro.runtime import resolve_device, seed_everything
from gpt2repro.tokenizer import Tokenizer
from gpt2repro.tokenizer_setup import ensure_dataset
from gpt2repro.training.optimizer import build_optimizer


@dataclass
class Session:
    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    dtype: str
    model: torch.nn.Module
    """The model as trained: possibly compiled, DDP-wrapped or FSDP-sharded (checkpoint.unwrap gets the GPT)."""
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    tokenizer: Tokenizer
    data_dir: Path
    run_dir: Path
    writer: MetricsWriter
    flops_per_token: float
    peak_flops: float
    config_json: str
    hellaswag: list[dict[str, Any]] | None
    """The HellaSwag examples scored at each evaluation (None: eval.hellaswag is off)."""

    def peak_memory(self) -> int:
        return peak_memory_bytes(self.device)

    def close(self) -> None:
        """End of the run: the session is unusable afterwards."""
        self.writer.close()
        # DDP and FSDP hold the process group inside reference cycles. Left to the garbage
        # collector at interpreter exit, gloo's threads die mid-teardown and abort the
        # process (torch 2.11): free them while the interpreter is whole.
        del self.model, self.optimizer
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


def previous_run(cfg: TrainConfig) -> bool:
    """Whether out_dir holds a run that this one would overwrite instead of continue."""
    run_dir = cfg.run.out_dir
    if not ((run_dir / "metrics.jsonl").exists() or (run_dir / "checkpoints").exists()):
        return False
    source = ckpt.find_resume(cfg.checkpoint.resume, run_dir)
    return source is None or not source.resolve().is_relative_to(run_dir.resolve())


def set_aside(run_dir: Path) -> Path:
    """Rename `run_dir` to the first free `<run_dir>.N`, N = 1, 2, ...; returns the new name."""
    return move_aside(run_dir, run_dir)  # run_dir itself exists, so the name gets a number


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


def prepare_run_dir(cfg: TrainConfig, dist: DistInfo) -> None:
    """Move an earlier run aside (rank 0; the others wait) and make the run directory."""
    run_dir = cfg.run.out_dir
    if dist.is_main:
        if previous_run(cfg):
            moved = set_aside(run_dir)
            print(
                f"note: {run_dir} held an earlier run; moved it to {moved}. "
                f"To continue a run instead, pass --checkpoint.resume auto.",
                flush=True,
            )
        run_dir.mkdir(parents=True, exist_ok=True)
    wait_for_main(dist)  # no rank looks into run_dir before the move


def recover_checkpoints(cfg: TrainConfig, dist: DistInfo) -> None:
    """A resumed run first finishes what a killed one left half-done in its checkpoints
    directory (rank 0; the others wait): a checkpoint half-replaced is put back, abandoned
    temporaries (a whole checkpoint each) are deleted. See `atomic.recover_directories`."""
    if cfg.checkpoint.resume == "none":
        return  # a new run moves an earlier one aside, leftovers and all
    if dist.is_main:
        for note in recover_directories(cfg.run.out_dir / "checkpoints"):
            print(f"note: {note}", flush=True)
    wait_for_main(dist)


def write_run_records(s: Session) -> None:
    """config.json and environment.json (rank 0). Called once the run has started: a resume
    that is refused must leave the records of the run it would have continued as they were."""
    if s.dist.is_main:
        (s.run_dir / "config.json").write_text(s.config_json + "\n")
        (s.run_dir / "environment.json").write_text(
            json.dumps(environment_record(s.device, s.dist), indent=2) + "\n"
        )


def open_session(cfg: TrainConfig) -> Session:
    device = resolve_device(cfg.run.device)
    dist = init_distributed(device)
    cfg.validate(dist.world_size)
    r = cfg.run
    recover_checkpoints(cfg, dist)
    point = ckpt.resume_point(cfg.checkpoint.resume, r.out_dir, r.max_steps, r.max_minutes)
    for note in cfg.warnings():
        print0(dist, f"warning: {note}")
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    dtype = resolve_dtype(cfg.run.dtype, device)
    parallel = cfg.run.parallel
    check_parallel(parallel, dtype)
    configure_backends(device)
    hellaswag = load_hellaswag(cfg)
    data_dir, tokenizer = ensure_dataset(cfg.data, dist)
    check_val_split(cfg, data_dir, dist, tokenizer)
    manifest = read_manifest(data_dir)
    if cfg.model.vocab_size != tokenizer.vocab_size:
        print0(
            dist,
            f"note: model.vocab_size set to {tokenizer.vocab_size} to match tokenizer {tokenizer.identifier}",
        )
        cfg = replace(cfg, model=replace(cfg.model, vocab_size=tokenizer.vocab_size))
    if manifest.get("vocab_size") not in (None, tokenizer.vocab_size):
        raise ValueError(
            f"{data_dir}: prepared with a {manifest['vocab_size']}-token vocabulary, "
            f"but the tokenizer has {tokenizer.vocab_size}. Re-run `gpt2repro prepare`."
        )
    check_sample_prompt(cfg, tokenizer)
    seed_everything(cfg.run.seed)  # the same on every rank: FSDP shards each rank's own copy
    gpt = GPT(cfg.model).to(device)
    compile_model = cfg.run.compile if cfg.run.compile is not None else device.type == "cuda"
    model = wrap_model(gpt, device, compile_model, dist, parallel, dtype)
    optimizer = build_optimizer(gpt, cfg.optim, device)  # after wrapping: FSDP swaps parameters
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == "fp16")
    if dist.rank > 0:
        # Other ranks draw their own dropout masks; rank 0 goes on as a single process would.
        seed_everything(cfg.run.seed + dist.rank)
    run_dir = cfg.run.out_dir
    config_json = json.dumps(asdict(cfg), indent=2, default=str)
    prepare_run_dir(cfg, dist)
    wandb = cfg.log.wandb_project if cfg.log.wandb else None
    tensorboard = cfg.log.tensorboard and dist.is_main
    purge = point[1] + 1 if point is not None else None  # what the resumed run logs again
    writer = MetricsWriter(
        run_dir, tensorboard, wandb if dist.is_main else None, asdict(cfg), purge_step=purge
    )
    fpt = flops_per_token(cfg.model, cfg.batch.seq_len, gpt.num_params())
    peak, peak_source = peak_flops_for(device, dtype)
    print0(
        dist,
        f"model: {gpt.num_params():,} parameters | device {device} | dtype {dtype} | "
        f"compile {compile_model} | world size {dist.world_size}"
        f"{f' ({parallel})' if dist.enabled else ''} | "
        f"accumulation {cfg.grad_accum_steps(dist.world_size)}\n"
        f"mfu: against {peak / 1e12:.3g} TFLOP/s per device, {peak_source}",
    )
    return Session(
        cfg,
        dist,
        device,
        dtype,
        model,
        optimizer,
        scaler,
        tokenizer,
        data_dir,
        run_dir,
        writer,
        fpt,
        peak,
        config_json,
        hellaswag,
    )
