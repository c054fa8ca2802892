"""The recipes in runs/: every command each one would run parses, as the CLI parses it.

With GPT2REPRO_DRY_RUN=1 a recipe prints its steps instead of running them. A `train`
step then runs as `train --dry-run`, which resolves and validates the whole config for the
recipe's number of processes without data; every other `gpt2repro` step is parsed by the
argument class `cli.COMMANDS` maps it to, so a misspelled flag or a missing argument fails
here rather than hours into a run; torchrun's own flags go through torchrun's parser.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest
import tyro
from torch.distributed.run import get_args_parser

from gpt2repro.cli import COMMANDS, main

RUNS = Path(__file__).resolve().parents[2] / "runs"
RECIPES = sorted(p for p in RUNS.glob("*.sh") if p.name != "common.sh")
PIPELINE = {"train", "eval", "export", "card", "plot"}  # what every recipe carries out


def printed_steps(recipe: Path, tmp_path: Path) -> list[list[str]]:
    """The commands `recipe` prints with GPT2REPRO_DRY_RUN=1, each split into words."""
    env = os.environ | {
        "GPT2REPRO_DRY_RUN": "1",
        "OUT_DIR": str(tmp_path / "out"),
        "DATA_DIR": str(tmp_path / "data"),
    }
    done = subprocess.run(
        ["bash", str(recipe)], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return [shlex.split(line[2:]) for line in done.stdout.splitlines() if line.startswith("+ ")]


def gpt2repro_args(argv: list[str]) -> tuple[list[str], int]:
    """The arguments after `gpt2repro` or `torchrun ... -m gpt2repro`, and the process count."""
    if argv[0] == "gpt2repro":
        return argv[1:], 1
    assert argv[0] == "torchrun", f"a step that runs neither gpt2repro nor torchrun: {argv}"
    launch = get_args_parser().parse_args(argv[1:])
    assert launch.module and launch.training_script == "gpt2repro", argv
    return list(launch.training_script_args), int(launch.nproc_per_node)


def command_name(args: list[str]) -> str:
    for n in (2, 1):
        name = " ".join(args[:n])
        if name == "train" or name in COMMANDS:
            return name
    raise AssertionError(f"not a gpt2repro command: {args}")


def check_train(
    args: list[str], nproc: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`train ARGS --dry-run` exits 0, in the environment torchrun gives rank 0 of `nproc`."""
    argv = ["train", *args] + ([] if "--dry-run" in args else ["--dry-run"])
    code: object = 0
    with monkeypatch.context() as m:
        if nproc > 1:  # the batch arithmetic is checked for the recipe's world size
            for key, value in (
                ("WORLD_SIZE", str(nproc)),
                ("RANK", "0"),
                ("LOCAL_RANK", "0"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", "29500"),
            ):
                m.setenv(key, value)
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
    out, err = capsys.readouterr()
    assert code in (0, None), f"{shlex.join(argv)} exited {code}:\n{err}"
    assert f"world size:          {nproc}" in out, out[-2000:]


def check_arguments(name: str, args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """The command's own argument class parses `args` (tyro exits 2 on a bad one)."""
    args_type, _ = COMMANDS[name]
    try:
        tyro.cli(args_type, args=args, prog=f"gpt2repro {name}")
    except SystemExit as e:
        pytest.fail(
            f"gpt2repro {name} {shlex.join(args)}: exit {e.code}\n{capsys.readouterr().err}"
        )


def test_there_are_recipes() -> None:
    names = {p.name for p in RECIPES}
    assert {"shakespeare_cpu.sh", "gpt2_124m_fineweb_edu_8xh100.sh"} <= names, names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_commands_parse(
    recipe: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "set -euo pipefail" in recipe.read_text(), "a failed step must stop the recipe"
    steps = printed_steps(recipe, tmp_path)
    seen: set[str] = set()
    planned: list[tuple[list[str], int]] = []  # a recipe's plan and train steps: one dry run
    for argv in steps:
        args, nproc = gpt2repro_args(argv)
        name = command_name(args)
        seen.add(name)
        rest = args[len(name.split()) :]
        if name == "train":
            assert str(tmp_path / "out") in rest, f"OUT_DIR is not used: {argv}"
            key = ([a for a in rest if a != "--dry-run"], nproc)
            if key not in planned:
                planned.append(key)
                check_train(rest, nproc, monkeypatch, capsys)
        else:
            check_arguments(name, rest, capsys)
    assert seen >= PIPELINE, f"{recipe.name} lacks {sorted(PIPELINE - seen)}"
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists(), "a dry run wrote"
