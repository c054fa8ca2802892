"""Loss curves from run directories' metrics.jsonl, as PNG files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl`; a clear error when the run has none."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no metrics. Pass a run directory written by `gpt2repro train`."
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(records: list[dict[str, Any]], kind: str, key: str) -> tuple[list[int], list[float]]:
    rows = [r for r in records if r.get("kind") == kind and key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def plot_loss(run_dirs: list[Path], out: Path) -> Path:
    """Train and validation loss (log scale) against steps, one colour per run."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run_dir in enumerate(run_dirs):
        records = read_metrics(run_dir)
        color = f"C{i}"
        steps, loss = series(records, "train", "loss")
        ax.plot(steps, loss, color=color, alpha=0.6, label=f"{run_dir.name} train")
        steps, loss = series(records, "val", "loss")
        ax.plot(steps, loss, color=color, marker="o", label=f"{run_dir.name} val")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return out
