"""Model cards: a Hugging Face style README.md written next to an exported model.

`write_card(checkpoint)` exports a training checkpoint (config.json + model.safetensors)
unless the target already holds an export, then writes README.md there: a metadata header
the Hub reads (license, tags, datasets, model-index results), the architecture, tokenizer,
training data and tokens seen, the training configuration, every evaluation result with
its direction and standard error (from `gpt2repro eval` and the run's own metrics), plots
of the run, and limitations.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt2repro import checkpoint as ckpt
from gpt2repro.evaluation.report import RESULTS_FILE, higher_is_better, read_results, task_entry
from gpt2repro.loading import Loaded
from gpt2repro.model import GPTConfig
from gpt2repro.nanochat import GPT2_CLASS, stock_class
from gpt2repro.run_dir import RunDir

HUB_DATASETS = {
    "fineweb-edu": "HuggingFaceFW/fineweb-edu",
    "fineweb": "HuggingFaceFW/fineweb",
    "openwebtext": "Skylion007/openwebtext",
    "tinystories": "roneneldan/TinyStories",
}
"""Hub ids of the corpora `gpt2repro prepare` downloads, for the card's `datasets:` field."""


@dataclass
class CardInfo:
    """Everything the card shows; what is unknown stays None or empty and is left out."""

    name: str
    config: GPTConfig
    parameters: int
    tokenizer: str
    step: int | None = None
    tokens: int | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    license: str = "mit"


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory of RUN/checkpoints/NAME, when the checkpoint sits in one."""
    run = checkpoint.resolve().parent.parent
    return run if RunDir(run).metrics.is_file() else None


def training_results(run_dir: Path, step: int | None) -> dict[str, dict[str, Any]]:
    """The run's last validation and HellaSwag records at or before `step`, as result entries."""
    from gpt2repro.plot import HELLASWAG_KIND, read_metrics

    records = [r for r in read_metrics(run_dir) if step is None or r.get("step", 0) <= step]
    out = {}
    val = [r for r in records if r.get("kind") == "val"]
    if val:
        r = val[-1]
        metrics: dict[str, float] = {k: float(r[k]) for k in ("loss", "ppl", "bpb") if k in r}
        out[f"training val (step {r['step']})"] = task_entry(metrics, info={"step": r["step"]})
    hs = [r for r in records if r.get("kind") == HELLASWAG_KIND]
    if hs:
        r = hs[-1]
        metrics = {k: float(r[k]) for k in ("acc", "acc_norm", "acc_bytes") if k in r}
        stderr: dict[str, float] = {
            k: float(r[f"{k}_stderr"]) for k in metrics if f"{k}_stderr" in r
        }
        out[f"training hellaswag (step {r['step']})"] = task_entry(
            metrics, stderr, r.get("n"), info={"step": r["step"]}
        )
    return out


def gather(checkpoint: Path, loaded: Loaded, export_dir: Path, name: str | None = None) -> CardInfo:
    """What the card says about `checkpoint` (loaded as `loaded`), exported to `export_dir`."""
    from gpt2repro.plot import plot_runs

    info = CardInfo(
        name=name or checkpoint.resolve().name,
        config=loaded.model.config,
        parameters=loaded.model.num_params(),
        tokenizer=loaded.tokenizer.identifier,
    )
    if ckpt.is_checkpoint(checkpoint):
        meta = ckpt.read_meta(checkpoint)
        info.step = meta.get("step")
        info.tokens = meta.get("train_state", {}).get("tokens")
        info.train_config = meta.get("config", {})
    run_dir = run_dir_of(checkpoint)
    if run_dir is not None:
        info.name = name or run_dir.name
        if RunDir(run_dir).environment.is_file():
            info.environment = json.loads(RunDir(run_dir).environment.read_text())
        info.results |= training_results(run_dir, info.step)
        info.plots = [p.name for p in plot_runs([run_dir], export_dir)]
    for folder in (checkpoint, export_dir):  # the export's own results win
        info.results |= read_results(folder / RESULTS_FILE)["results"]
    return info


def write_card(
    checkpoint: Path, export_dir: Path | None = None, name: str | None = None, license: str = "mit"
) -> Path:
    """Export `checkpoint` (unless `export_dir` holds an export already) and write its README.md.
    A training run's directory stands for its best checkpoint (loading.resolve_source)."""
    from gpt2repro.loading import load_source, resolve_source
    from gpt2repro.pretrained import CONFIG_FILE, export_hf

    checkpoint = Path(resolve_source(str(checkpoint)))
    if not checkpoint.is_dir():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint or model directory.")
    default_dir = checkpoint.with_name(checkpoint.name + "-hf")
    if export_dir is None:
        is_export = (checkpoint / CONFIG_FILE).is_file() and not ckpt.is_checkpoint(checkpoint)
        export_dir = checkpoint if is_export else default_dir
    loaded = load_source(str(checkpoint))
    source = str(checkpoint.resolve())
    spec = loaded.tokenizer.spec
    if not (export_dir / CONFIG_FILE).is_file():
        export_hf(loaded.model, export_dir, tokenizer_spec=spec, source=source)
    elif export_dir != checkpoint and not _same_weights(loaded.model, export_dir):
        if not _exported_from(export_dir, source, export_dir == default_dir):
            raise FileExistsError(
                f"{export_dir} holds an export of other weights, not of {checkpoint}; a card "
                f"never replaces it. Pass a new --export-dir, or replace that export first: "
                f"gpt2repro export {checkpoint} {export_dir} --overwrite"
            )
        # An export of an earlier state of this checkpoint (e.g. `best` before more
        # training): replace it, and the results evaluated on it go with it.
        export_hf(loaded.model, export_dir, tokenizer_spec=spec, overwrite=True, source=source)
    info = gather(checkpoint, loaded, export_dir, name)
    info.license = license
    readme = export_dir / "README.md"
    readme.write_text(render_card(info), encoding="utf-8")
    return readme


def _exported_from(export_dir: Path, source: str, default_dir: bool) -> bool:
    """Whether `export_dir` was exported from `source` (exports that predate the record
    count as ours only in the checkpoint's own `-hf` folder)."""
    from gpt2repro.pretrained import read_sidecar

    sidecar = read_sidecar(export_dir)
    if not sidecar:
        return False  # not an export of ours at all
    recorded = sidecar.get("source")
    return recorded == source or (recorded is None and default_dir)


def _same_weights(model: torch.nn.Module, export_dir: Path) -> bool:
    from gpt2repro.loading import load_source

    exported = load_source(str(export_dir)).model.state_dict()
    ours = model.state_dict()
    return exported.keys() == ours.keys() and all(torch.equal(exported[k], ours[k]) for k in ours)


# ---- rendering ----


def _q(value: Any) -> str:
    """A YAML scalar: JSON's quoting is valid YAML."""
    return json.dumps(value)


def metadata(info: CardInfo) -> str:
    lines = ["---", "language:", "- en", f"license: {info.license}", "library_name: transformers"]
    lines += ["pipeline_tag: text-generation", "tags:", "- gpt2", "- gpt2repro", "- causal-lm"]
    dataset = info.train_config.get("data", {}).get("dataset")
    if dataset in HUB_DATASETS:
        lines += ["datasets:", f"- {HUB_DATASETS[dataset]}"]
    if info.results:
        lines += ["model-index:", f"- name: {_q(info.name)}", "  results:"]
        for task, entry in info.results.items():
            lines += ["  - task:", "      type: text-generation", "    dataset:"]
            lines += [f"      name: {_q(task)}", f"      type: {_q(task.split(':')[-1])}"]
            lines += ["    metrics:"]
            for metric, value in entry["metrics"].items():
                lines += [f"    - type: {_q(metric)}", f"      value: {value:.6g}"]
    return "\n".join([*lines, "---"])


def _count(n: int | None) -> str:
    if n is None:
        return "unknown"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit} ({n:,})"
    return f"{n:,}"


def results_table(results: dict[str, dict[str, Any]]) -> str:
    if not results:
        return "No evaluation results yet: run `gpt2repro eval` on the checkpoint, then this command again."
    lines = ["| task | metric | value | ± stderr | better |", "|---|---|---:|---:|:---:|"]
    for task, entry in results.items():
        for metric, value in entry["metrics"].items():
            err = entry.get("stderr", {}).get(metric)
            up = entry.get("higher_is_better", {}).get(metric, higher_is_better(metric))
            shown = "" if err is None or not math.isfinite(err) else f"{err:.4f}"
            lines.append(f"| {task} | {metric} | {value:.4f} | {shown} | {'↑' if up else '↓'} |")
    return "\n".join(lines)


def architecture_line(c: GPTConfig) -> str:
    """The block design in words."""
    if stock_class(c) == GPT2_CLASS:
        return "GPT-2: pre-LayerNorm blocks, learned positions, GELU (tanh), tied embeddings."
    cap = f", logits soft-capped at {c.logit_softcap:g}" if c.logit_softcap else ""
    head = "tied" if c.tie_embeddings else "untied"
    return (
        f"Modern: rotary positions (base {c.rope_base:g}), weight-free RMSNorm (also on the "
        f"embeddings), QK-norm, ReLU² MLP, no biases, a {head} output head{cap}."
    )


def render_card(info: CardInfo) -> str:
    """The README.md text."""
    c = info.config
    tc = info.train_config
    parts = [metadata(info), f"# {info.name}", ""]
    cls = stock_class(c)
    kind = "A GPT-2" if cls == GPT2_CLASS else "A GPT-2-sized modern (nanochat-style)"
    source = tc.get("init", {}).get("source")
    origin = f"fine-tuned from `{source}`" if source else "trained from scratch"
    parts.append(
        f"{kind} language model ({_count(info.parameters)} parameters) {origin} with "
        f"gpt2repro. It loads with `transformers.AutoModelForCausalLM.from_pretrained` from this "
        f"folder (a `{cls}`)."
    )
    parts += ["", "## Architecture", "", "| | |", "|---|---|"]
    arch = [
        ("layers", c.n_layer),
        ("heads", c.n_head),
        ("width (n_embd)", c.n_embd),
        ("context (tokens)", c.block_size),
        ("vocabulary", c.vocab_size),
        ("biases", c.bias),
        (
            "parameters",
            f"{info.parameters:,}" + (" (tied embedding counted once)" if c.tie_embeddings else ""),
        ),
    ]
    parts += [f"| {k} | {v} |" for k, v in arch]
    parts += ["", architecture_line(c)]
    parts += ["", "## Tokenizer", ""]
    parts.append(
        "OpenAI's GPT-2 BPE (50,257 tokens)."
        if info.tokenizer == "gpt2"
        else f"A byte-level BPE trained by gpt2repro (`{info.tokenizer}`), saved as `tokenizer.json`."
    )
    parts += ["", "## Training data", ""]
    data = tc.get("data", {})
    parts.append(f"- dataset: {data.get('dataset', 'unknown')}")
    parts.append(f"- tokens seen: {_count(info.tokens)}")
    parts.append(f"- optimizer steps: {info.step if info.step is not None else 'unknown'}")
    if tc:
        parts += ["", "## Training configuration", "", "```json"]
        parts += [json.dumps({k: tc[k] for k in ("optim", "batch", "run") if k in tc}, indent=2)]
        parts += ["```"]
    env = info.environment
    if env:
        hw = env.get("hardware", {})
        parts += ["", f"Hardware: {json.dumps(hw)}; code revision {env.get('git_revision')}."]
    parts += ["", "## Results", "", results_table(info.results), ""]
    parts.append(
        "↑ higher is better, ↓ lower is better. HellaSwag is scored completion style (llm.c): "
        "acc_norm is OpenAI GPT-2 124M's 0.2955. `lm_eval:` rows come from "
        "lm-evaluation-harness; `val:` rows and training rows are next-token loss, perplexity "
        "and bits per byte on held-out text of the named dataset."
    )
    has_core = any(task == "core" or task.startswith("core:") for task in info.results)
    if has_core:
        from gpt2repro.plot import CORE_REFERENCES

        gpt2 = ", ".join(f"{r.label.split()[-1]} {r.value:.4f}" for r in CORE_REFERENCES)
        parts[-1] += (
            " `core` is the DCLM CORE score as nanochat computes it: 22 few-shot tasks, each "
            "accuracy centred so that guessing scores 0, then averaged (`core:` rows are the "
            f"tasks); OpenAI GPT-2 scores {gpt2}."
        )
    if info.plots:
        parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in info.plots]
    parts += ["", "## Limitations", ""]
    parts += [
        "- A small research model: it produces fluent but often false or incoherent text, and "
        "must not be relied on for facts or advice.",
        "- It learned whatever its web or book text contains, including biases and offensive "
        "content; it has no instruction tuning and no safety filtering.",
        "- English only, and only the domains of its training data.",
        f"- Context of {c.block_size} tokens; results above are zero-shot"
        + (" (CORE's tasks few-shot)" if has_core else "")
        + " and measured once (one seed), with the standard errors shown.",
    ]
    return "\n".join(parts) + "\n"
