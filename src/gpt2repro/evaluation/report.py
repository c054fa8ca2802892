"""Evaluation results: one JSON file per model, a terminal table, and which way each metric is better.

A results file maps task names to entries of this shape:

    {"metrics": {"acc": 0.29, ...}, "stderr": {"acc": 0.0045, ...},
     "higher_is_better": {"acc": true, ...}, "samples": 10042, "info": {...}}

Task names: `hellaswag`, `val:DATASET/SPLIT`, `core` (the CORE score) and `core:LABEL` (its
tasks: acc and centred acc), `lm_eval:TASK`. Running more tasks later
adds to (or replaces entries of) the same file, so one file collects a model's results.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpt2repro.atomic import write_text_atomic

RESULTS_FILE = "eval_results.json"
FORMAT_VERSION = 1
LOWER_IS_BETTER = {
    "loss",
    "ppl",
    "perplexity",
    "word_perplexity",
    "byte_perplexity",
    "bits_per_byte",
    "bpb",
}


def higher_is_better(metric: str) -> bool:
    """Direction of the metrics we know: losses, perplexities and bits per byte go down."""
    return metric.split(",")[0] not in LOWER_IS_BETTER


def task_entry(
    metrics: dict[str, float],
    stderr: dict[str, float] | None = None,
    samples: int | None = None,
    info: dict[str, Any] | None = None,
    higher: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """One task's results in the file's shape; directions default to `higher_is_better`."""
    higher = higher or {}
    return {
        "metrics": metrics,
        "stderr": {k: v for k, v in (stderr or {}).items() if _is_number(v)},
        "higher_is_better": {m: higher.get(m, higher_is_better(m)) for m in metrics},
        "samples": samples,
        "info": info or {},
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def from_lm_eval(output: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """simple_evaluate's output as entries named `lm_eval:TASK` (groups without metrics left out)."""
    entries = {}
    for task, values in output["results"].items():
        metrics: dict[str, float] = {}
        stderr: dict[str, float] = {}
        for key, value in values.items():
            if "," not in key or not _is_number(value):
                continue  # alias, sample counts, "N/A" standard errors
            name, filt = key.split(",", 1)
            is_stderr = name.endswith("_stderr")
            name = name.removesuffix("_stderr")
            if filt != "none":
                name = f"{name},{filt}"
            (stderr if is_stderr else metrics)[name] = float(value)
        if not metrics:
            continue
        higher = {
            m: bool(output.get("higher_is_better", {}).get(task, {}).get(m.split(",")[0], True))
            for m in metrics
        }
        n = output.get("n-samples", {}).get(task, {}).get("effective")
        version = output.get("versions", {}).get(task)
        entries[f"lm_eval:{task}"] = task_entry(
            metrics, stderr, n, {"version": version} if version is not None else {}, higher
        )
    return entries


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Task | metric | value | ± standard error | better direction, one line per metric."""
    rows = [("task", "metric", "value", "± stderr", "better")]
    for task, entry in results.items():
        for metric, value in entry["metrics"].items():
            err = entry["stderr"].get(metric)
            rows.append(
                (
                    task,
                    metric,
                    f"{value:.4f}",
                    "" if err is None else f"{err:.4f}",
                    "higher" if entry["higher_is_better"].get(metric, True) else "lower",
                )
            )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join(
            c.rjust(w) if i in (2, 3) else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def default_results_path(source: str) -> Path:
    """Inside a model's directory; for a hub id or init:PRESET, under ./eval_results/."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path / RESULTS_FILE
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in source)
    return Path("eval_results") / f"{safe}.json"


def read_results(path: Path) -> dict[str, Any]:
    """A results file, or an empty one when `path` does not exist."""
    if not path.is_file():
        return {"format_version": FORMAT_VERSION, "results": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}). Delete it and evaluate again.") from e
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise ValueError(f"{path}: not a gpt2repro results file. Delete it or pass another --out.")
    return data


def write_results(
    path: Path, new: dict[str, dict[str, Any]], model: dict[str, Any]
) -> dict[str, Any]:
    """Merge `new` task entries into the file at `path` (written atomically); returns the file's data."""
    data = read_results(path)
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for entry in new.values():
        entry.setdefault("info", {})["date"] = stamp
    data["results"].update(new)
    data["model"] = model
    data["format_version"] = FORMAT_VERSION
    # unique: evaluations of one model may run side by side and write this file at once.
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n", unique=True)
    return data
