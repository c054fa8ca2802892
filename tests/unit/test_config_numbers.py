"""Every number a run or a sample takes is finite and in its range, checked before anything starts.

The fields are found by walking the config's dataclasses, not listed here: a numeric field
added later without an allowed range in ranges.RANGES fails these tests.
"""

from __future__ import annotations

import math
import typing
from dataclasses import fields
from pathlib import Path

import pytest

from gpt2repro import ranges
from gpt2repro.config import TrainConfig
from gpt2repro.sampling import SamplingConfig


def numeric_hints() -> dict[str, tuple[type, ...]]:
    """Dotted name -> number types (int, float) of every numeric field of every section."""
    found = {}
    for section in fields(TrainConfig):
        part_type = typing.get_type_hints(TrainConfig)[section.name]
        for name, hint in typing.get_type_hints(part_type).items():
            types = tuple(t for t in (typing.get_args(hint) or (hint,)) if t in (int, float))
            if types:
                found[f"{section.name}.{name}"] = types
    return found


NUMERIC = numeric_hints()
FLOATS = [name for name, types in NUMERIC.items() if float in types]


def with_value(name: str, value: object) -> TrainConfig:
    cfg = TrainConfig()
    section, field = name.split(".")
    setattr(getattr(cfg, section), field, value)  # as a mutated or hand-built config would
    return cfg


def problems(cfg: TrainConfig) -> str:
    try:
        cfg.validate()
    except ValueError as e:
        return str(e)
    return ""


def test_the_walk_finds_the_fields_of_every_section() -> None:
    assert {"optim.lr", "run.max_minutes", "model.dropout", "stability.spike_zscore"} <= set(FLOATS)
    assert "run.seed" in NUMERIC and "model.bias" not in NUMERIC  # bool is a flag, not a number


def test_every_numeric_field_has_an_allowed_range() -> None:
    missing = sorted(set(NUMERIC) - set(ranges.RANGES))
    assert not missing, f"add these to ranges.RANGES with their allowed range: {missing}"
    stale = sorted(set(ranges.RANGES) - set(NUMERIC))
    assert not stale, f"ranges.RANGES names fields that do not exist: {stale}"


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("name", FLOATS)
def test_non_finite_numbers_are_named(name: str, value: float) -> None:
    msg = problems(with_value(name, value))
    assert f"{name}={value} must be finite" in msg, msg


def outside(allowed: ranges.Range, integer: bool) -> list[float]:
    """Values just outside `allowed`, one per bound."""
    step = 1 if integer else 1e-3
    values = []
    if allowed.low > -math.inf:
        values.append(allowed.low if allowed.low_open else allowed.low - step)
    if allowed.high < math.inf:
        values.append(allowed.high + step if allowed.high_closed else allowed.high)
    return [int(v) if integer else v for v in values]


@pytest.mark.parametrize("name", list(NUMERIC))
def test_numbers_outside_the_range_are_named_with_the_range(name: str) -> None:
    allowed = ranges.RANGES[name]
    for value in outside(allowed, float not in NUMERIC[name]):
        msg = problems(with_value(name, value))
        assert f"{name}={value} {allowed.rule(value)}" in msg, msg


@pytest.mark.parametrize("name", list(NUMERIC))
def test_the_lowest_allowed_number_is_accepted(name: str) -> None:
    allowed = ranges.RANGES[name]
    if allowed.low_open or allowed.low == -math.inf:
        pytest.skip("no lowest value")
    value = int(allowed.low) if float not in NUMERIC[name] else allowed.low
    msg = problems(with_value(name, value))
    assert f"{name}={value} {allowed.rule(value)}" not in msg, msg


def test_the_issues_examples_are_one_error_that_says_the_ranges() -> None:
    cfg = TrainConfig()
    cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.grad_clip = math.inf, math.nan, math.nan
    cfg.run.max_minutes, cfg.stability.spike_zscore = math.nan, -1.0
    msg = problems(cfg)
    for needle in (
        "optim.lr=inf must be finite and positive",
        "optim.weight_decay=nan must be finite and >= 0",
        "optim.grad_clip=nan must be finite and >= 0 (0: no clipping)",
        "run.max_minutes=nan must be finite and positive (or None: no limit)",
        "stability.spike_zscore=-1.0 must be positive (or None: off)",
    ):
        assert needle in msg, needle
    assert msg.count("Invalid training config") == 1
    cfg.stability.spike_zscore = math.nan
    assert "stability.spike_zscore=nan must be finite and positive" in problems(cfg)


def test_model_fields_are_checked_after_the_model_config_was_built() -> None:
    cfg = TrainConfig()
    cfg.model.dropout, cfg.model.n_head = 1.0, 5  # GPTConfig checked itself only when built
    msg = problems(cfg)
    assert "model.dropout=1.0 must be in [0, 1)" in msg
    assert "model.n_embd=768 must be divisible by model.n_head=5" in msg


def test_a_file_where_the_run_directory_goes_is_named(tmp_path: Path) -> None:
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory")
    for out_dir in (a_file, a_file / "run"):
        cfg = TrainConfig()
        cfg.run.out_dir = out_dir
        msg = problems(cfg)
        assert f"{a_file} is a file, not a directory" in msg, msg
        assert "choose a directory path for --run.out-dir, or remove the file" in msg
    cfg.run.out_dir = tmp_path / "new" / "run"
    assert "run.out_dir" not in problems(cfg)


@pytest.mark.parametrize(
    ("settings", "needle"),
    [
        ({"temperature": math.inf}, "temperature=inf must be finite and >= 0"),
        ({"temperature": math.nan}, "temperature=nan must be finite and >= 0"),
        ({"top_p": math.nan}, "top_p=nan must be in (0, 1]"),
        ({"top_p": math.inf}, "top_p=inf must be in (0, 1]"),
        ({"top_k": 0}, "top_k=0 must be >= 1"),
        ({"max_new_tokens": 0}, "max_new_tokens=0 must be >= 1"),
    ],
)
def test_sampling_numbers_are_finite_and_in_range(settings: dict[str, float], needle: str) -> None:
    with pytest.raises(ValueError) as err:
        SamplingConfig(**settings)  # type: ignore[arg-type]
    assert needle in str(err.value)
