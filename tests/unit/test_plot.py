"""Plots of run logs: the expected series, reference lines and files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpt2repro.evaluation.commands import PlotArgs, run_plot
from gpt2repro.plot import hellaswag_figure, loss_figure, plot_loss, plot_runs


def make_run(root: Path, name: str, dataset: str, tokenizer: str, hellaswag: bool) -> Path:
    """A run directory as `gpt2repro train` leaves it: config.json and metrics.jsonl."""
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps({"data": {"dataset": dataset, "tokenizer": tokenizer}})
    )
    records = []
    for step in range(10, 101, 10):
        loss = 10.0 / step**0.3
        records.append(
            {"step": step, "kind": "train", "loss": loss, "lr": 1e-3, "tokens": 1000 * step}
        )
        if step % 50 == 0:
            records.append(
                {"step": step, "kind": "val", "loss": loss + 0.1, "bpb": 1.0, "tokens": 1000 * step}
            )
            if hellaswag:
                records.append(
                    {"step": step, "kind": "hellaswag", "acc_norm": 0.25 + step / 1000, "acc": 0.25}
                )
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> list[Path]:
    return [
        make_run(tmp_path, "edu", "fineweb-edu", "gpt2", hellaswag=True),
        make_run(tmp_path, "bard", "shakespeare", "train:4096", hellaswag=False),
    ]


def lines_by_label(fig: object) -> dict[str, object]:
    (ax,) = fig.axes  # type: ignore[attr-defined]
    return {line.get_label(): line for line in ax.get_lines()}


def test_loss_against_steps_and_tokens_with_the_matching_reference(runs: list[Path]) -> None:
    fig = loss_figure(runs, "step")
    lines = lines_by_label(fig)
    assert set(lines) == {
        "edu train", "edu val", "bard train", "bard val",
        "OpenAI GPT-2 124M (FineWeb-Edu val): 3.2924",  # only the edu run has GPT-2's data and tokenizer
    }  # fmt: skip
    assert list(lines["edu train"].get_xdata()) == list(range(10, 101, 10))
    assert list(lines["edu val"].get_xdata()) == [50, 100]
    assert lines["edu val"].get_ydata()[0] == pytest.approx(10.0 / 50**0.3 + 0.1)
    assert list(lines["OpenAI GPT-2 124M (FineWeb-Edu val): 3.2924"].get_ydata()) == [
        3.2924,
        3.2924,
    ]
    assert fig.axes[0].get_yscale() == "log"

    by_tokens = lines_by_label(loss_figure(runs, "tokens"))
    assert list(by_tokens["bard train"].get_xdata()) == [1000 * s for s in range(10, 101, 10)]
    assert loss_figure(runs, "tokens").axes[0].get_xlabel() == "training tokens"


def test_reference_modes(runs: list[Path]) -> None:
    every = [k for k in lines_by_label(loss_figure(runs, "step", "all")) if k.startswith("OpenAI")]
    assert every == [
        "OpenAI GPT-2 124M (FineWeb-Edu val): 3.2924",
        "OpenAI GPT-2 124M (OpenWebText val): 3.12",
        "OpenAI GPT-2 350M (OpenWebText val): 2.84",
        "OpenAI GPT-2 774M (OpenWebText val): 2.67",
        "OpenAI GPT-2 1558M (OpenWebText val): 2.54",
    ]
    assert not [k for k in lines_by_label(loss_figure(runs, "step", "none")) if "OpenAI" in k]
    with pytest.raises(ValueError, match="references='some': use one of auto, all, none"):
        loss_figure(runs, "step", "some")


def test_hellaswag_against_steps_with_gpt2_and_gpt3_lines(runs: list[Path]) -> None:
    lines = lines_by_label(hellaswag_figure(runs))
    assert list(lines["edu"].get_xdata()) == [50, 100]
    assert list(lines["edu"].get_ydata()) == pytest.approx([0.30, 0.35])
    assert len(lines["bard"].get_xdata()) == 0
    assert lines["OpenAI GPT-2 124M: 0.2955"].get_ydata()[0] == 0.2955
    assert lines["GPT-3 124M (paper): 0.337"].get_ydata()[0] == 0.337


def test_png_files(runs: list[Path], tmp_path: Path) -> None:
    written = plot_runs(runs, tmp_path / "plots")
    assert [p.name for p in written] == ["loss_steps.png", "loss_tokens.png", "hellaswag.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in written)
    # Without HellaSwag records there is no HellaSwag plot; train.py's plot_loss still works.
    assert [p.name for p in run_plot(PlotArgs((runs[1],)))] == ["loss_steps.png", "loss_tokens.png"]
    assert (runs[1] / "loss_steps.png").is_file()
    assert plot_loss([runs[0]], tmp_path / "loss.png").read_bytes().startswith(b"\x89PNG")
    with pytest.raises(FileNotFoundError, match="No metrics in"):
        plot_runs([tmp_path / "nothing"], tmp_path)
