"""Curves from run directories' metrics.jsonl, as PNG files: loss, HellaSwag and CORE, runs overlaid.

Reference lines are published scores of OpenAI's GPT-2 and the GPT-3 paper's small model.
A validation loss reference only means something on the same validation text with the
same tokenizer, so by default (`auto`) a loss line is drawn only for runs on that dataset
with GPT-2's tokenizer; HellaSwag and CORE lines are always drawn.

CORE points come from metrics.jsonl records of kind "core" ({"step", "tokens", "core"};
training does not write them yet) and from the results `gpt2repro eval CHECKPOINT
--tasks core` writes into a run's checkpoints, at the tokens each checkpoint had seen.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpt2repro.run_dir import RunDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@dataclass(frozen=True)
class Reference:
    label: str
    value: float
    dataset: str | None
    """Dataset whose validation loss this is (None: a HellaSwag score)."""


LOSS_REFERENCES = (
    # "Let's reproduce GPT-2 (124M)": OpenAI's checkpoint on the FineWeb-Edu validation shard.
    Reference("OpenAI GPT-2 124M (FineWeb-Edu val)", 3.2924, "fineweb-edu"),
    # nanoGPT's README: OpenAI's checkpoints evaluated on OpenWebText.
    Reference("OpenAI GPT-2 124M (OpenWebText val)", 3.12, "openwebtext"),
    Reference("OpenAI GPT-2 350M (OpenWebText val)", 2.84, "openwebtext"),
    Reference("OpenAI GPT-2 774M (OpenWebText val)", 2.67, "openwebtext"),
    Reference("OpenAI GPT-2 1558M (OpenWebText val)", 2.54, "openwebtext"),
)
HELLASWAG_REFERENCES = (
    Reference("OpenAI GPT-2 124M", 0.2955, None),  # llm.c, completion style, acc_norm
    Reference("GPT-3 124M (paper)", 0.337, None),  # GPT-3 paper, table 3.3, Small
)
CORE_REFERENCES = (
    # nanochat dev/estimate_gpt3_core.ipynb, OpenAI's checkpoints through nanochat's CORE
    # evaluation (the 1558M's 0.256525 is its README's "time to GPT-2" target).
    Reference("OpenAI GPT-2 124M", 0.1139, None),
    Reference("OpenAI GPT-2 350M", 0.1849, None),
    Reference("OpenAI GPT-2 774M", 0.2146, None),
    Reference("OpenAI GPT-2 1558M", 0.2565, None),
)
REFERENCE_MODES = ("auto", "all", "none")
HELLASWAG_KIND = "hellaswag"
"""metrics.jsonl records {"step", "kind": "hellaswag", "acc_norm", ...} hold HellaSwag scores."""
CORE_KIND = "core"
"""metrics.jsonl records {"step", "tokens", "kind": "core", "core"} hold CORE scores."""
CHECKPOINT_RESULTS = "eval_results.json"
"""Where `gpt2repro eval` writes a checkpoint's results (evaluation.report.RESULTS_FILE, a
layer above this module)."""


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The records of `run_dir/metrics.jsonl`; a clear error when the run has none."""
    path = RunDir(run_dir).metrics
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no metrics. Pass a run directory written by `gpt2repro train`."
        )
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def series(
    records: list[dict[str, Any]], kind: str, key: str, x: str = "step"
) -> tuple[list[float], list[float]]:
    rows = [r for r in records if r.get("kind") == kind and key in r and x in r]
    return [r[x] for r in rows], [r[key] for r in rows]


def run_dataset(run_dir: Path) -> tuple[str | None, str | None]:
    """(dataset, tokenizer spec) from the run's config.json, when it has one."""
    path = RunDir(run_dir).config
    if not path.is_file():
        return None, None
    data = json.loads(path.read_text()).get("data", {})
    return data.get("dataset"), data.get("tokenizer")


def loss_references(run_dirs: list[Path], mode: str) -> list[Reference]:
    """The loss lines for `mode`: all, none, or (auto) those matching a run's data and tokenizer."""
    if mode not in REFERENCE_MODES:
        raise ValueError(f"references={mode!r}: use one of {', '.join(REFERENCE_MODES)}.")
    if mode != "auto":
        return list(LOSS_REFERENCES) if mode == "all" else []
    runs = {run_dataset(d) for d in run_dirs}
    return [r for r in LOSS_REFERENCES if (r.dataset, "gpt2") in runs]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def loss_figure(run_dirs: list[Path], x: str = "step", references: str = "auto") -> Figure:
    """Train (thin) and validation (dots) loss on a log scale against `x`: step or tokens."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run_dir in enumerate(run_dirs):
        records = read_metrics(run_dir)
        color = f"C{i}"
        xs, loss = series(records, "train", "loss", x)
        ax.plot(xs, loss, color=color, alpha=0.6, linewidth=1, label=f"{run_dir.name} train")
        xs, loss = series(records, "val", "loss", x)
        ax.plot(xs, loss, color=color, marker="o", markersize=3, label=f"{run_dir.name} val")
    for k, ref in enumerate(loss_references(run_dirs, references)):
        ax.axhline(ref.value, color="0.3", linestyle=("--", ":", "-.")[k % 3], linewidth=1,
                   label=f"{ref.label}: {ref.value:g}")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("step" if x == "step" else "training tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training and validation loss")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def hellaswag_figure(run_dirs: list[Path], references: str = "auto") -> Figure:
    """HellaSwag acc_norm (completion style) against steps, with GPT-2 and GPT-3 124M lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run_dir in enumerate(run_dirs):
        xs, acc = series(read_metrics(run_dir), HELLASWAG_KIND, "acc_norm")
        ax.plot(xs, acc, color=f"C{i}", marker="o", markersize=3, label=run_dir.name)
    if references != "none":
        for k, ref in enumerate(HELLASWAG_REFERENCES):
            ax.axhline(ref.value, color="0.3", linestyle=("--", ":")[k % 2], linewidth=1,
                       label=f"{ref.label}: {ref.value:g}")  # fmt: skip
    ax.axhline(0.25, color="0.7", linewidth=1, label="chance: 0.25")
    ax.set_xlabel("step")
    ax.set_ylabel("HellaSwag acc_norm")
    ax.set_title("HellaSwag (completion style)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def core_points(run_dir: Path) -> tuple[list[float], list[float]]:
    """(training tokens, CORE) of a run, from its metrics and its checkpoints' eval results."""
    points = dict(zip(*series(read_metrics(run_dir), CORE_KIND, "core", "tokens"), strict=True))
    for path in sorted(RunDir(run_dir).checkpoints.glob(f"*/{CHECKPOINT_RESULTS}")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            continue  # `gpt2repro eval` reports a damaged file; a plot draws what it can
        core = data.get("results", {}).get(CORE_KIND, {}).get("metrics", {}).get("core")
        tokens = data.get("model", {}).get("tokens")
        if core is not None and tokens is not None:
            points[tokens] = core
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def core_figure(run_dirs: list[Path], references: str = "auto") -> Figure:
    """CORE against training tokens, with OpenAI GPT-2's four sizes as lines."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, run_dir in enumerate(run_dirs):
        xs, core = core_points(run_dir)
        ax.plot(xs, core, color=f"C{i}", marker="o", markersize=3, label=run_dir.name)
    if references != "none":
        for k, ref in enumerate(CORE_REFERENCES):
            ax.axhline(ref.value, color="0.3", linestyle=("--", ":", "-.", (0, (5, 1)))[k],
                       linewidth=1, label=f"{ref.label}: {ref.value:g}")  # fmt: skip
    ax.axhline(0.0, color="0.7", linewidth=1, label="chance: 0")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("CORE (mean centred accuracy)")
    ax.set_title("CORE (DCLM, as nanochat reports it)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def save(fig: Figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return out


def plot_runs(run_dirs: list[Path], out_dir: Path, references: str = "auto") -> list[Path]:
    """loss_steps.png, loss_tokens.png, and hellaswag.png / core.png when any run has those scores."""
    missing = [str(RunDir(d).metrics) for d in run_dirs if not RunDir(d).metrics.is_file()]
    if missing:
        raise FileNotFoundError(
            f"No metrics in {', '.join(missing)}. Pass run directories written by `gpt2repro train`."
        )
    loss_references(run_dirs, references)  # validates the mode before any work
    written = [
        save(loss_figure(run_dirs, "step", references), out_dir / "loss_steps.png"),
        save(loss_figure(run_dirs, "tokens", references), out_dir / "loss_tokens.png"),
    ]
    if any(series(read_metrics(d), HELLASWAG_KIND, "acc_norm")[0] for d in run_dirs):
        written.append(save(hellaswag_figure(run_dirs, references), out_dir / "hellaswag.png"))
    if any(core_points(d)[0] for d in run_dirs):
        written.append(save(core_figure(run_dirs, references), out_dir / "core.png"))
    return written


def plot_loss(run_dirs: list[Path], out: Path) -> Path:
    """Train and validation loss (log scale) against steps, one colour per run, to `out`."""
    return save(loss_figure(run_dirs, "step"), out)
