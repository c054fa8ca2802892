"""FLOPs per token, hardware peaks, MFU, and the run's logs (JSONL, samples, TensorBoard, W&B)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch

from gpt2repro.atomic import write_text_atomic
from gpt2repro.model import GPTConfig
from gpt2repro.runtime import sync

# Dense (no sparsity) datasheet peaks in FLOP/s, by a substring of the device name; the
# first key found wins, so the PCIe and NVL parts come before the SXM ones.
GPU_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H200 NVL": {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12},
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51e12},
    "H100 NVL": {"bf16": 835e12, "fp16": 835e12, "tf32": 418e12, "fp32": 60e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "tf32": 494e12, "fp32": 67e12},  # SXM
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    "L40S": {"bf16": 362e12, "fp16": 362e12, "tf32": 183e12, "fp32": 91.6e12},
    "A10G": {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12, "fp32": 31.2e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
    "4090": {"bf16": 165e12, "fp16": 165e12, "tf32": 82.6e12, "fp32": 82.6e12},
}


def flops_per_token(cfg: GPTConfig, seq_len: int, n_params: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus 12*L*T*C for attention scores.

    The estimate of the PaLM paper (appendix B), as used by nanoGPT; N excludes the tables
    that cost no matmul: the learned position table, and an untied head's input embedding
    (a lookup; a tied one is also the head's weight).
    """
    lookups = cfg.block_size * cfg.n_embd if cfg.position == "learned" else 0
    if not cfg.tie_embeddings:
        lookups += cfg.vocab_size * cfg.n_embd
    return 6 * (n_params - lookups) + 12 * cfg.n_layer * seq_len * cfg.n_embd


def datasheet_peak(device: torch.device, dtype: str) -> float | None:
    """Peak FLOP/s for `dtype` on a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in GPU_PEAK_FLOPS.items():
        if key in name:
            return peaks.get(dtype)
    return None


PEAK_MATMUL_N = {"cpu": 2048, "cuda": 8192}
"""Matmul size for peak measurements: smaller ones read a CPU's AMX rate low, inflating every
MFU (benchmarks/results/2026-11-22_notes-matmul-peak_cpu-2core-intel-amx.md)."""


def measure_matmul_rates(
    device: torch.device,
    dtype: torch.dtype,
    n: int | None = None,
    seconds: float = 0.5,
    trials: int = 1,
) -> list[float]:
    """FLOP/s of a square matmul in each of `trials` windows of `seconds / trials`, measured now."""
    n = n or PEAK_MATMUL_N.get(device.type, PEAK_MATMUL_N["cpu"])
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    # On a GPU the host only queues work: wait every few products, or a window would queue
    # a thousand of them before its clock ran out and last that much longer.
    per_wait = 4 if device.type == "cuda" else 1
    rates = []
    for _ in range(trials):
        sync(device)
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / trials:
            for _ in range(per_wait):
                a @ b
            count += per_wait
            sync(device)
        rates.append(2 * n**3 * count / (time.perf_counter() - t0))
    return rates


def measure_matmul_peak(
    device: torch.device,
    dtype: torch.dtype,
    n: int | None = None,
    seconds: float = 0.5,
    trials: int = 1,
) -> float:
    """The reachable matmul FLOP/s on this machine: the fastest of `trials` windows.

    On a shared virtual machine a single window can land in a neighbour's burst and read low
    (benchmarks/results/2026-11-22_notes-matmul-peak_cpu-2core-intel-amx.md).
    """
    return max(measure_matmul_rates(device, dtype, n, seconds, trials))


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory so far: allocated CUDA memory, or the process's peak RSS on CPU.

    On Linux the high-water mark of this process's own address space (VmHWM): ru_maxrss
    also counts the parent's pages a fork+exec'd child briefly shared, so a child of a large
    process (pytest, a benchmark driver) would report the parent's size.
    """
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _record_step(line: str) -> float:
    """The step of one metrics.jsonl line; infinity for a line that is not a whole record."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


SAMPLE_HEADER = re.compile(r"^=== step (\d+) ===$", re.MULTILINE)
"""The line that opens each section of samples.txt."""


def samples_up_to(text: str, step: int) -> str:
    """The sections of samples.txt `text` written at `step` or before.

    Sections are written in step order, so everything from the first later header on goes,
    a section torn by a kill with it.
    """
    later = next((m for m in SAMPLE_HEADER.finditer(text) if int(m[1]) > step), None)
    return text if later is None else text[: later.start()]


class MetricsWriter:
    """Append metrics to metrics.jsonl and samples to samples.txt, and metrics to TensorBoard /
    W&B when asked and installed.

    `purge_step` (a resumed run: its checkpoint's step + 1) hides the TensorBoard points the
    earlier run logged from that step on: they are logged again. Its event files are kept,
    as TensorBoard expects (SummaryWriter's purge_step).
    """

    def __init__(
        self,
        metrics: Path,
        samples: Path,
        tensorboard: Path | None,
        wandb_project: str | None,
        config: dict[str, Any],
        purge_step: int | None = None,
    ) -> None:
        """Files as run_dir.RunDir names them; `tensorboard` None: no TensorBoard."""
        self.path = metrics
        self.samples_path = samples
        self.tb: Any = None
        self.wandb: Any = None
        if tensorboard is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(tensorboard), purge_step=purge_step)
            except ImportError:
                print("note: tensorboard is not installed; metrics go to metrics.jsonl only.")
        if wandb_project:
            try:
                import wandb

                self.wandb = wandb.init(
                    project=wandb_project, config=config, dir=str(metrics.parent)
                )
            except ImportError:
                print("note: wandb is not installed (pip install wandb); skipping W&B logging.")

    def truncate_after(self, step: int) -> None:
        """Drop records and samples past `step`, so a resumed run's logs have no duplicate or
        orphan steps (TensorBoard's: see `purge_step`).

        A run killed mid-write can leave a torn last line or section: it is dropped, not
        parsed. What is kept replaces each file in one rename, so a second kill cannot empty it.
        """
        if self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines() if _record_step(ln) <= step]
            write_text_atomic(self.path, "".join(ln + "\n" for ln in keep))
        if self.samples_path.exists():
            text = self.samples_path.read_text(encoding="utf-8", errors="replace")
            write_text_atomic(self.samples_path, samples_up_to(text, step))

    def write_samples(self, step: int, texts: list[str]) -> None:
        """Append one section per text to samples.txt, headed by `step`."""
        section = "".join(f"=== step {step} ===\n{text}\n" for text in texts)
        with open(self.samples_path, "a", encoding="utf-8") as f:
            f.write(section)  # in one write: a kill tears at most the last section

    def write(self, record: dict[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        step = record["step"]
        for key, value in record.items():
            if self.tb is not None and key != "step" and isinstance(value, int | float):
                self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log(record, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
