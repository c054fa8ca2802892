"""`gpt2repro bench recipes`: the classic recipe (`shakespeare_cpu`) against the modern one
(`modern_shakespeare_cpu`) at equal training time, several seeds each, scored on the whole
held-out split in bits per byte.

The classic runs set the budget (their median training time). Every other run is sized to
it: a short probe gives its seconds per step, its schedule (warm-up, decay) is laid over the
steps that fit, and a time limit stops it at the budget whatever the probe said. Reported
per recipe: the final bits per byte of each seed, their median and spread; the modern
recipe's *time to target*, the training seconds it needs to reach the classic median
(interpolated between evaluations); a figure of held-out bits per byte against training
seconds for every run; and an ablation at one seed that adds the modern pieces one at a time.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

from gpt2repro.bench.common import hardware
from gpt2repro.config import OptimConfig, TrainConfig
from gpt2repro.presets import modern_model_options, train_preset
from gpt2repro.run_dir import RunDir
from gpt2repro.training.loop import train

TIME_SLACK = 1.05
"""A sized run may train at most this much longer than the budget (its last step ends past
the limit, not before)."""
WHOLE_SPLIT = 1 << 40  # a val_tokens budget larger than any split: score all of it
EVALS_PER_RUN = 14
"""Points on each curve: enough to interpolate the time to target."""


def _modern_optim(classic: OptimConfig, modern: OptimConfig) -> OptimConfig:
    """The classic optimizer switched to Muon with the modern learning rates (schedule kept)."""
    keep = {k: getattr(classic, k) for k in ("schedule", "decay_fraction", "min_lr", "lr")}
    return replace(modern, **keep)


def ablation_steps(classic: TrainConfig, modern: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """Classic, then the modern pieces added one at a time, ending at the modern recipe."""
    full = modern_model_options(classic.model, logit_softcap=modern.model.logit_softcap)
    muon = replace(classic, optim=_modern_optim(classic.optim, modern.optim))
    wsd = replace(muon, optim=modern.optim)
    rope = replace(wsd, model=replace(classic.model, position="rope"))
    block = replace(wsd, model=replace(full, logit_softcap=0.0))
    return [
        ("classic", classic),
        ("+muon", muon),
        ("+wsd", wsd),
        ("+rope", rope),
        ("+qk-norm, relu2, rmsnorm, untied, zero-init", block),
        ("+softcap (modern)", replace(wsd, model=full)),
    ]


def val_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(training seconds, held-out bits per byte) at each evaluation of a run."""
    rows = [json.loads(line) for line in RunDir(run_dir).metrics.read_text().splitlines()]
    return [(r["train_seconds"], r["bpb"]) for r in rows if r["kind"] == "val"]


def time_to_target(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first training time at which `curve` reaches `target` bits per byte, linear
    between evaluations; None if it never does."""
    previous = None
    for seconds, bpb in curve:
        if bpb <= target:
            if previous is None or previous[1] == bpb:
                return seconds
            s0, b0 = previous
            return s0 + (seconds - s0) * (b0 - target) / (b0 - bpb)
        previous = (seconds, bpb)
    return None


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "values": values,
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def scored_run(
    cfg: TrainConfig, out_dir: Path, seed: int, steps: int, budget: float | None, evals: int
) -> Path:
    """`cfg` trained for `steps` (and at most about `budget` seconds), scored on the whole
    held-out split `evals` times; its run directory."""
    cfg = replace(cfg, run=replace(cfg.run, out_dir=out_dir, seed=seed, max_steps=steps))
    cfg.run.max_minutes = TIME_SLACK * budget / 60 if budget is not None else None
    cfg.eval = replace(
        cfg.eval, val_tokens=WHOLE_SPLIT, interval=max(1, steps // evals), sample_interval=0
    )
    cfg.checkpoint = replace(cfg.checkpoint, interval=0)
    train(cfg)
    return out_dir


def sized_steps(cfg: TrainConfig, out_dir: Path, budget: float, probe_steps: int) -> int:
    """The steps of `cfg` that fit `budget` training seconds, from a short probe run."""
    probe = replace(cfg, run=replace(cfg.run, out_dir=out_dir, max_steps=probe_steps))
    probe.run.max_minutes = None
    probe.eval = replace(cfg.eval, interval=0, val_tokens=cfg.batch.seq_len * 8, sample_interval=0)
    probe.checkpoint = replace(cfg.checkpoint, interval=0)
    seconds = train(probe).state.train_seconds
    return max(probe_steps, int(budget / (seconds / probe_steps)))


def bench_recipes(
    out_root: Path,
    seeds: int = 3,
    ablation: bool = True,
    probe_steps: int = 50,
    evals: int = EVALS_PER_RUN,
    classic: Callable[[], TrainConfig] = lambda: train_preset("shakespeare_cpu"),
    modern: Callable[[], TrainConfig] = lambda: train_preset("modern_shakespeare_cpu"),
) -> dict[str, Any]:
    """Both recipes at equal training time, `seeds` seeds each; see the module docstring."""
    base = classic()
    runs: dict[str, list[Path]] = {"classic": [], "modern": []}
    for seed in range(seeds):
        out = out_root / "classic" / f"seed{seed}"
        runs["classic"].append(scored_run(base, out, seed, base.run.max_steps, None, evals))
    classic_final = [val_curve(p)[-1] for p in runs["classic"]]
    budget = statistics.median(s for s, _ in classic_final)
    target = statistics.median(b for _, b in classic_final)
    steps = sized_steps(modern(), out_root / "modern_probe", budget, probe_steps)
    for seed in range(seeds):
        out = out_root / "modern" / f"seed{seed}"
        runs["modern"].append(scored_run(modern(), out, seed, steps, budget, evals))
    curves = {name: [val_curve(p) for p in paths] for name, paths in runs.items()}
    reach = [time_to_target(c, target) for c in curves["modern"]]
    reached = [r for r in reach if r is not None]
    result: dict[str, Any] = {
        "bench": "recipes",
        "date": date.today().isoformat(),
        "budget_train_seconds": budget,
        "target_bpb": target,
        "modern_steps": steps,
        "recipes": {
            name: {
                "final_bpb": spread([c[-1][1] for c in cs]),
                "train_seconds": spread([c[-1][0] for c in cs]),
            }
            for name, cs in curves.items()
        },
        "time_to_target_seconds": reach,
        # Median over the seeds that reached the target; None if fewer than half did.
        "time_to_target_ratio": (
            statistics.median(reached) / budget if 2 * len(reached) >= len(reach) else None
        ),
        "curves": {name: cs for name, cs in curves.items()},
        "hardware": hardware(),
    }
    m, c = result["recipes"]["modern"]["final_bpb"], result["recipes"]["classic"]["final_bpb"]
    result["median_bpb_change"] = m["median"] / c["median"] - 1
    if ablation:
        result["ablation"] = _ablation(
            base, modern(), out_root / "ablation", budget, probe_steps, evals
        )
    return result


def _ablation(
    classic: TrainConfig,
    modern: TrainConfig,
    root: Path,
    budget: float,
    probe_steps: int,
    evals: int,
) -> list[dict[str, Any]]:
    rows = []
    for i, (name, cfg) in enumerate(ablation_steps(classic, modern)):
        steps = sized_steps(cfg, root / f"probe{i}", budget, probe_steps)
        curve = val_curve(scored_run(cfg, root / f"step{i}", 0, steps, budget, evals))
        rows.append(
            {"variant": name, "steps": steps, "train_seconds": curve[-1][0], "bpb": curve[-1][1]}
        )
    return rows


def plot_recipes(result: dict[str, Any], out: Path) -> Path:
    """Held-out bits per byte against training seconds, every seed of both recipes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, color in (("classic", "tab:blue"), ("modern", "tab:orange")):
        for i, curve in enumerate(result["curves"][name]):
            xs, ys = zip(*curve, strict=True)
            ax.plot(xs, ys, color=color, alpha=0.8, label=f"{name} recipe" if i == 0 else None)
    ax.axhline(result["target_bpb"], color="gray", ls="--", lw=1, label="classic median, final")
    ax.set_xlabel("training seconds")
    ax.set_ylabel("held-out bits per byte")
    ax.set_title(f"classic vs modern recipe, {len(result['curves']['classic'])} seeds each")
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
