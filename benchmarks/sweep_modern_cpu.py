"""A one-at-a-time sweep of `modern_shakespeare_cpu`'s optimizer settings around the preset.

Every variant trains for the same number of steps (the count `gpt2repro bench recipes` sized
the modern recipe to on this machine) at one seed and is scored on the whole held-out split
in bits per byte, so the figures do not depend on how busy the machine is. Variants run in
parallel worker processes of one thread each.

    python benchmarks/sweep_modern_cpu.py OUT.json --steps 474 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
from dataclasses import replace
from datetime import date
from pathlib import Path
from typing import Any

VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("preset", {}),
    ("muon_lr=0.005", {"muon_lr": 0.005}),
    ("muon_lr=0.01", {"muon_lr": 0.01}),
    ("muon_lr=0.04", {"muon_lr": 0.04}),
    ("muon_lr=0.06", {"muon_lr": 0.06}),
    ("embed_lr=0.006", {"embed_lr": 0.006}),
    ("embed_lr=0.06", {"embed_lr": 0.06}),
    ("head_lr=0.002", {"head_lr": 0.002}),
    ("head_lr=0.008", {"head_lr": 0.008}),
    ("decay_fraction=0.2", {"decay_fraction": 0.2}),
    ("decay_fraction=0.6", {"decay_fraction": 0.6}),
    ("muon_weight_decay=0.1", {"muon_weight_decay": 0.1}),
    # second round: past the best single changes, and the best of them together
    ("head_lr=0.001", {"head_lr": 0.001}),
    ("muon_lr=0.01,head_lr=0.002", {"muon_lr": 0.01, "head_lr": 0.002}),
    (
        "muon_lr=0.01,head_lr=0.002,embed_lr=0.06",
        {"muon_lr": 0.01, "head_lr": 0.002, "embed_lr": 0.06},
    ),
    # third round: the decay fraction, the first round's largest single gain
    ("decay_fraction=0.8", {"decay_fraction": 0.8}),
    (
        "muon_lr=0.01,head_lr=0.002,decay_fraction=0.6",
        {"muon_lr": 0.01, "head_lr": 0.002, "decay_fraction": 0.6},
    ),
    (
        "muon_lr=0.01,head_lr=0.002,embed_lr=0.06,decay_fraction=0.6",
        {"muon_lr": 0.01, "head_lr": 0.002, "embed_lr": 0.06, "decay_fraction": 0.6},
    ),
]


def _one(job: tuple[str, dict[str, Any], int, int, str]) -> dict[str, Any]:
    import torch

    from gpt2repro.bench.recipes import scored_run, val_curve
    from gpt2repro.presets import train_preset

    name, optim, steps, seed, root = job
    torch.set_num_threads(1)
    cfg = train_preset("modern_shakespeare_cpu")
    cfg = replace(cfg, optim=replace(cfg.optim, **optim))
    out = Path(root) / name.replace("=", "_")
    curve = val_curve(scored_run(cfg, out, seed, steps, None, evals=1))
    return {"variant": name, "optim": optim, "seed": seed, "bpb": curve[-1][1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--steps", type=int, default=474)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("--root", type=Path, default=Path("runs_out/sweep_modern_cpu"))
    args = parser.parse_args()
    chosen = [v for v in VARIANTS if not args.only or v[0] in args.only]
    jobs = [(n, o, args.steps, args.seed, str(args.root)) for n, o in chosen]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        rows = []
        for row in pool.imap_unordered(_one, jobs):
            print(json.dumps(row), flush=True)
            rows.append(row)
    from gpt2repro.bench.common import hardware

    if args.out.is_file():  # a later round adds to the file (a variant run again replaces)
        ran = {r["variant"] for r in rows}
        rows += [r for r in json.loads(args.out.read_text())["rows"] if r["variant"] not in ran]
    rows.sort(key=lambda r: r["bpb"])
    result = {"bench": "sweep_modern_cpu", "date": date.today().isoformat(), "steps": args.steps}
    result |= {"rows": rows, "hardware": hardware()}
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
