"""The `gpt2repro` command: subcommands mapped to plain library functions.

This is the only module that exits. Each subcommand's arguments are a typed dataclass
parsed by tyro (field docstrings become --help); mistakes a user can make surface as
ValueError / FileNotFoundError from the library and are printed here as one paragraph,
with a non-zero exit and no traceback. Each command's arguments and entry point live in
the `commands` module of its package (data, evaluation, bench; model_commands for the
rest); only this module imports those.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import field, make_dataclass
from typing import Annotated, Any

import tyro

from gpt2repro.bench.commands import (
    BenchEvalArgs,
    BenchLoaderArgs,
    BenchLossArgs,
    BenchPeakArgs,
    BenchPrepareArgs,
    BenchRecipesArgs,
    BenchSampleArgs,
    BenchShakespeareArgs,
    BenchTrainArgs,
    run_bench_eval,
    run_bench_loader,
    run_bench_loss,
    run_bench_peak,
    run_bench_prepare,
    run_bench_recipes,
    run_bench_sample,
    run_bench_shakespeare,
    run_bench_train,
)
from gpt2repro.data.commands import PrepareArgs, VerifyArgs, run_prepare, run_verify
from gpt2repro.evaluation.commands import CardArgs, EvalArgs, PlotArgs, run_card, run_eval, run_plot
from gpt2repro.model_commands import (
    ExportArgs,
    SampleArgs,
    TokenizerEncodeArgs,
    TokenizerTrainArgs,
    run_export,
    run_sample,
    run_tokenizer_encode,
    run_tokenizer_train,
)


def pop_option(argv: list[str], name: str, default: str) -> tuple[str, list[str]]:
    """Remove `--name VALUE` or `--name=VALUE` from argv; returns (value, rest)."""
    rest, value, i = [], default, 0
    while i < len(argv):
        if argv[i] == name and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif argv[i].startswith(name + "="):
            value, i = argv[i].split("=", 1)[1], i + 1
        else:
            rest.append(argv[i])
            i += 1
    return value, rest


def run_train(argv: list[str]) -> None:
    """Train GPT-2 from a preset with typed overrides (--dry-run: plan only)."""
    from gpt2repro.config import TrainConfig
    from gpt2repro.distributed import dist_info_from_env
    from gpt2repro.presets import DEFAULT_TRAIN_PRESET, TRAIN_PRESETS, train_preset

    preset, argv = pop_option(argv, "--preset", DEFAULT_TRAIN_PRESET)
    description = (
        "Train GPT-2. Starts from --preset and overrides fields by name, e.g. --optim.lr 3e-4. "
        "--dry-run prints the resolved config, time and peak-memory estimates and the largest "
        "micro-batch that fits, without training."
    )
    # Built here, not at module level: TrainConfig imports torch, which `--help` of the other
    # commands should not wait for. --preset was read above (it picks the defaults); it is
    # declared again only so that --help lists it.
    preset_help = f"Preset to start from: {', '.join(TRAIN_PRESETS)}."
    dry_run_help = "Print the plan (config, time, memory, largest micro-batch) and exit."
    train_args = make_dataclass(
        "TrainArgs",
        [
            ("config", Annotated[TrainConfig, tyro.conf.arg(name="")]),
            ("preset", Annotated[str, tyro.conf.arg(help=preset_help)], field(default=preset)),
            (
                "dry_run",
                Annotated[bool, tyro.conf.FlagCreatePairsOff, tyro.conf.arg(help=dry_run_help)],
                field(default=False),
            ),
        ],
    )
    parsed = tyro.cli(
        train_args,
        default=train_args(train_preset(preset), preset, False),
        args=argv,
        prog="gpt2repro train",
        description=description,
    )
    cfg, dry_run = parsed.config, parsed.dry_run
    if cfg.init.source is not None:
        from gpt2repro.training.init_from import adopt_source

        # Before the plan too: a fine-tune's shape and tokenizer are its source's.
        quiet = not dist_info_from_env().is_main  # under torchrun, one note, not one per rank
        cfg = adopt_source(cfg, baseline=train_preset(preset), quiet=quiet)
    if dry_run:
        from gpt2repro.training.plan import dry_run_report

        report = dry_run_report(cfg)
        if dist_info_from_env().is_main:  # under torchrun, one report, not one per rank
            print(report)
        return
    from gpt2repro.training.loop import train

    result = train(cfg)
    if dist_info_from_env().is_main:
        _print_summary(result)
    if result.stopped_by == "unstable":
        raise SystemExit(3)
    if result.stopped_by == "signal":
        # The shell's convention, 128 + signal: 130 for Ctrl-C, 143 for SIGTERM. A rank that
        # stopped because another rank was signalled reports SIGTERM, as a scheduler would send.
        raise SystemExit(128 + (result.signal or signal.SIGTERM))


def _print_summary(result: Any) -> None:
    print(f"run directory: {result.run_dir}")
    if result.final_val:
        print(
            f"final val loss {result.final_val['loss']:.4f}, bits per byte {result.final_val['bpb']:.4f}"
        )
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    from gpt2repro.run_dir import RunDir

    run = RunDir(result.run_dir)
    for path in (run.samples, run.loss_plot, run.metrics):
        if path.exists():
            print(f"{path.name}: {path}")


# A table, not tyro's subcommands: tyro's dispatch made `--help` 1.4x slower (0.10 -> 0.14 s,
# even without `train`, whose config imports torch) and answers an unknown command with a box
# of its own instead of one `error:` line.
Command = tuple[type, Callable[..., object]]
COMMANDS: dict[str, Command] = {
    "prepare": (PrepareArgs, run_prepare),
    "data verify": (VerifyArgs, run_verify),
    "eval": (EvalArgs, run_eval),
    "plot": (PlotArgs, run_plot),
    "card": (CardArgs, run_card),
    "sample": (SampleArgs, run_sample),
    "export": (ExportArgs, run_export),
    "tokenizer train": (TokenizerTrainArgs, run_tokenizer_train),
    "tokenizer encode": (TokenizerEncodeArgs, run_tokenizer_encode),
    "bench peak": (BenchPeakArgs, run_bench_peak),
    "bench train": (BenchTrainArgs, run_bench_train),
    "bench loss": (BenchLossArgs, run_bench_loss),
    "bench sample": (BenchSampleArgs, run_bench_sample),
    "bench prepare": (BenchPrepareArgs, run_bench_prepare),
    "bench loader": (BenchLoaderArgs, run_bench_loader),
    "bench eval": (BenchEvalArgs, run_bench_eval),
    "bench shakespeare": (BenchShakespeareArgs, run_bench_shakespeare),
    "bench recipes": (BenchRecipesArgs, run_bench_recipes),
}


def usage(group: str | None = None) -> str:
    """The list of commands, or only those of `group` (e.g. "bench")."""
    head = f"gpt2repro {group} COMMAND" if group else "gpt2repro COMMAND"
    lines = [f"usage: {head} [--help] [ARGS...]", "", "commands:"]
    if group is None:
        lines.append(f"  {'train':<18} {run_train.__doc__ or ''}")
    for name, (args_type, _) in COMMANDS.items():
        if group is None or name.split()[0] == group:
            doc = (args_type.__doc__ or "").strip().splitlines()[0]
            lines.append(f"  {name:<18} {doc}")
    return "\n".join(lines)


GROUPS = {name.split()[0] for name in COMMANDS if " " in name}


def _find_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """Longest command name that prefixes argv, and the remaining arguments."""
    for n in (2, 1):
        name = " ".join(argv[:n])
        if len(argv) >= n and name in COMMANDS:
            return name, list(argv[n:])
    given = " ".join(argv[:2]) if argv else ""
    group = argv[0] if argv and argv[0] in GROUPS else None
    raise ValueError(f"Unknown command {given!r}.\n\n{usage(group)}")


def fail(message: str, code: int = 2) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script; `argv` defaults to sys.argv[1:]."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if argv[0] in GROUPS and argv[1:2] in ([], ["-h"], ["--help"]):  # `gpt2repro bench`
        print(usage(argv[0]))
        return
    try:
        if argv[0] == "train":
            run_train(argv[1:])
            return
        name, rest = _find_command(argv)
        args_type, run = COMMANDS[name]
        args: object = tyro.cli(args_type, args=rest, prog=f"gpt2repro {name}")
        run(args)
    except (
        ValueError,
        # The machine's side (a missing or existing file, a full disk, no network, a dead
        # worker): each message names the file or what to do.
        OSError,
    ) as e:
        fail(str(e))
    except KeyboardInterrupt:
        fail("Interrupted.", code=130)
