"""What every benchmark shares: the hardware record, the printed report, the ratio of rounds.

Each benchmark returns a plain JSON-able dict and never asserts a speed. Results are
ratios against a baseline measured in the same run, because this kind of machine varies
by 10-25% from run to run.
"""

from __future__ import annotations

import json
import platform
import statistics
from pathlib import Path
from typing import Any

import torch


def hardware() -> dict[str, Any]:
    """What the numbers were measured on."""
    info: dict[str, Any] = {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()  # the current one: resolve_device set it
    return info


def median_ratio(slow: list[float], fast: list[float]) -> float:
    """Median over rounds of slow[i] / fast[i] (the speed-up of `fast`)."""
    return float(statistics.median(a / b for a, b in zip(slow, fast, strict=True)))


def report(result: dict[str, Any], out: Path | None) -> None:
    """Print `result` as a two-column table and optionally write it as JSON."""
    for row in result.get("rows", []):
        print(
            "  ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
            )
        )
    for key, value in result.items():
        if key not in ("hardware", "rows"):
            shown = f"{value:.4g}" if isinstance(value, float) else value
            print(f"{key:<26} {shown}")
    print(f"{'hardware':<26} {json.dumps(result['hardware'])}")
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
