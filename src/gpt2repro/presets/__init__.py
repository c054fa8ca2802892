"""Named presets, as plain functions returning configs, and their registries.

The naming rule: a function that returns a model shape (GPTConfig) ends in `_model`, and a
function that returns a whole training run (TrainConfig) is named after the run. Each has
its own namespace on the command line: `init:NAME` (sample, eval, export, bench) takes a model
shape by its name without `_model` (`gpt2_124m_model` -> `init:gpt2_124m`), and
`train --preset NAME` takes a training run by its function's name. A name given to the
wrong one is answered with the right one.

Model shapes live in `shapes`, GPT-2's training runs in `classic`, the modern recipe in
`modern`, fine-tuning runs in `finetune`; every name is importable from here.
"""

from __future__ import annotations

from collections.abc import Callable

from gpt2repro.config import TrainConfig
from gpt2repro.model import GPTConfig
from gpt2repro.presets.classic import (
    gpt2_124m_fineweb_edu,
    gpt2_124m_fineweb_edu_0p8b,
    gpt2_124m_owt,
    gpt2_124m_owt_custom_bpe,
    gpt2_124m_tinystories,
    gpt2_350m,
    gpt2_774m,
    gpt2_1558m,
    shakespeare_char_baseline,
    shakespeare_cpu,
)
from gpt2repro.presets.finetune import (
    FINETUNE_CPU_LR,
    finetune_shakespeare,
    finetune_shakespeare_cpu,
)
from gpt2repro.presets.modern import (
    modern_124m_fineweb_edu,
    modern_350m_fineweb_edu,
    modern_model_options,
    modern_shakespeare_cpu,
)
from gpt2repro.presets.shapes import (
    MODEL_PRESETS,
    MODEL_SUFFIX,
    gpt2_124m_model,
    gpt2_350m_model,
    gpt2_774m_model,
    gpt2_1558m_model,
    mini_model,
    small_model,
    tiny_model,
)

__all__ = [
    "DEFAULT_TRAIN_PRESET",
    "FINETUNE_CPU_LR",
    "MODEL_PRESETS",
    "MODEL_SUFFIX",
    "TRAIN_PRESETS",
    "finetune_shakespeare",
    "finetune_shakespeare_cpu",
    "gpt2_124m_fineweb_edu",
    "gpt2_124m_fineweb_edu_0p8b",
    "gpt2_124m_model",
    "gpt2_124m_owt",
    "gpt2_124m_owt_custom_bpe",
    "gpt2_124m_tinystories",
    "gpt2_350m",
    "gpt2_350m_model",
    "gpt2_774m",
    "gpt2_774m_model",
    "gpt2_1558m",
    "gpt2_1558m_model",
    "mini_model",
    "model_preset",
    "modern_124m_fineweb_edu",
    "modern_350m_fineweb_edu",
    "modern_model_options",
    "modern_shakespeare_cpu",
    "shakespeare_char_baseline",
    "shakespeare_cpu",
    "small_model",
    "tiny_model",
    "train_preset",
]


def model_preset(name: str) -> GPTConfig:
    """The model shape called `name` (as in `init:NAME`), or a ValueError naming the valid ones."""
    if name not in MODEL_PRESETS:
        raise ValueError(f"Unknown model preset {name!r}. {_model_hint(name)}")
    return MODEL_PRESETS[name]()


def _model_hint(name: str) -> str:
    """What to write instead of an unknown model preset `name`."""
    shapes, short = ", ".join(MODEL_PRESETS), name.removesuffix(MODEL_SUFFIX)
    if short in MODEL_PRESETS:
        return f"Model presets are named without {MODEL_SUFFIX!r}: use init:{short}."
    if name in TRAIN_PRESETS:
        return (
            f"{name!r} is a training preset (`gpt2repro train --preset {name}`); init: takes a "
            f"model shape: {shapes}."
        )
    return f"Choose one of: {shapes}."


TRAIN_PRESETS: dict[str, Callable[[], TrainConfig]] = {
    f.__name__: f
    for f in (
        shakespeare_cpu,
        gpt2_124m_owt,
        gpt2_124m_fineweb_edu,
        gpt2_124m_fineweb_edu_0p8b,
        gpt2_124m_owt_custom_bpe,
        gpt2_124m_tinystories,
        gpt2_350m,
        gpt2_774m,
        gpt2_1558m,
        shakespeare_char_baseline,
        modern_shakespeare_cpu,
        modern_124m_fineweb_edu,
        modern_350m_fineweb_edu,
        finetune_shakespeare,
        finetune_shakespeare_cpu,
    )
}
# finetune_shakespeare_cpu continues this run (tests/unit/test_config.py holds them together).
DEFAULT_TRAIN_PRESET = modern_shakespeare_cpu.__name__


def train_preset(name: str) -> TrainConfig:
    """The training run called `name` (as in `--preset NAME`), or a ValueError naming the valid ones."""
    if name not in TRAIN_PRESETS:
        runs = ", ".join(TRAIN_PRESETS)
        shape = name.removesuffix(MODEL_SUFFIX)
        if shape in MODEL_PRESETS:
            raise ValueError(
                f"Unknown training preset {name!r}: that is a model shape (init:{shape}), not "
                f"a training run. Choose one of: {runs}; --model.* fields change the shape."
            )
        raise ValueError(f"Unknown training preset {name!r}. Choose one of: {runs}.")
    return TRAIN_PRESETS[name]()
