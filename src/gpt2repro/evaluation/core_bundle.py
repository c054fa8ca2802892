"""The DCLM CORE evaluation bundle: where it comes from, and its tasks read and checked.

The bundle is nanochat's `eval_bundle.zip` (the DCLM paper's "core" tasks,
arXiv:2406.11794), unzipped to a folder `eval_bundle/` holding:

  core.yaml            `icl_tasks`: a list of {label, dataset_uri, num_fewshot (a list; the
                       first entry is used), icl_task_type, continuation_delimiter (default " ")}
  eval_meta_data.csv   one row per task; `Eval Task` is the label, `Random baseline` the
                       accuracy of guessing, in percent
  eval_data/...        one JSONL file per task (`dataset_uri` is relative to eval_data/)

Example fields by `icl_task_type`:

  multiple_choice      query, choices (list), gold (index of the right choice)
  schema               context_options (list), continuation, gold (index of the right context)
  language_modeling    context, continuation

Each task's examples are shuffled with `random.Random(1337)` before anything else, as
nanochat's `scripts/base_eval.py` does, so `--limit N` takes the same N examples it takes
with `--max-per-task N`, and the few-shot examples are drawn from those.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpt2repro.assets import cache_dir

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"
TASK_TYPES = ("multiple_choice", "schema", "language_modeling")
SHUFFLE_SEED = 1337  # nanochat scripts/base_eval.py: the order --max-per-task cuts from
CONFIG_FILE = "core.yaml"
META_FILE = "eval_meta_data.csv"
DATA_DIR = "eval_data"
FIELDS = {
    "multiple_choice": "query (text), choices (a list of texts) and gold (an index into choices)",
    "schema": "context_options (a list of texts), continuation (text) and gold (an index into "
    "context_options)",
    "language_modeling": "context (text) and continuation (text)",
}


@dataclass(frozen=True)
class CoreTask:
    """One task of core.yaml with its examples, shuffled and limited."""

    label: str
    task_type: str
    """multiple_choice, schema or language_modeling."""
    num_fewshot: int
    delimiter: str
    """Text between a query/context and its continuation."""
    random_baseline: float
    """Accuracy of random guessing, in percent (eval_meta_data.csv)."""
    path: Path
    examples: list[dict[str, Any]]


def cached_bundle() -> Path:
    return cache_dir() / "core" / "eval_bundle"


def fetch_bundle(path: Path | str | None = None, timeout: float = 30.0) -> Path:
    """The bundle folder: `path` if given, else the cached copy, else downloaded and cached."""
    if path is not None:
        path = Path(path).expanduser()
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"{path}: not a CORE bundle folder (no {CONFIG_FILE}). Pass the eval_bundle "
                f"folder unzipped from {BUNDLE_URL}."
            )
        return path
    target = cached_bundle()
    if (target / CONFIG_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Downloaded and unzipped beside the target, then moved in whole: a killed download
    # never leaves a partial bundle where the next run would find it.
    tmp = Path(tempfile.mkdtemp(prefix=".eval_bundle-", dir=target.parent))
    try:
        archive = tmp / "eval_bundle.zip"
        with urllib.request.urlopen(BUNDLE_URL, timeout=timeout) as response:
            archive.write_bytes(response.read())
        with zipfile.ZipFile(archive) as z:
            z.extractall(tmp / "x")
        if not (tmp / "x" / "eval_bundle" / CONFIG_FILE).is_file():
            raise ValueError(f"{BUNDLE_URL}: the archive holds no eval_bundle/{CONFIG_FILE}.")
        if not (target / CONFIG_FILE).is_file():  # another process may have been quicker
            shutil.rmtree(target, ignore_errors=True)  # a folder left without core.yaml
            os.replace(tmp / "x" / "eval_bundle", target)
    except (urllib.error.URLError, OSError, zipfile.BadZipFile) as e:
        raise ConnectionError(
            f"Could not download the CORE bundle from {BUNDLE_URL} ({e}). On a machine with "
            f"internet access, download eval_bundle.zip, unzip it and pass the eval_bundle "
            f"folder: --core-path DIR (or unzip it so that {target / CONFIG_FILE} exists)."
        ) from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_bundle(
    root: Path, labels: list[str] | None = None, limit: int | None = None
) -> list[CoreTask]:
    """The tasks of `root`/core.yaml (only `labels`, in core.yaml's order, when given), each
    with its random baseline and its examples read, checked, shuffled and cut to `limit`."""
    entries = _read_config(root / CONFIG_FILE)
    known = [e["label"] for e in entries]
    if labels is not None:
        unknown = [x for x in labels if x not in known]
        if unknown:
            raise ValueError(
                f"Unknown CORE task {', '.join(map(repr, unknown))}: {root / CONFIG_FILE} has "
                f"{', '.join(known)}."
            )
        entries = [e for e in entries if e["label"] in labels]
    baselines = _read_baselines(root / META_FILE)
    missing = [e["label"] for e in entries if e["label"] not in baselines]
    if missing:
        raise ValueError(
            f"{root / META_FILE}: no row for core.yaml task {', '.join(map(repr, missing))}; "
            f"each task needs its 'Random baseline' to be centred. Add the row(s), or restore "
            f"the file from {BUNDLE_URL}."
        )
    tasks = []
    for e in entries:
        path = root / DATA_DIR / e["dataset_uri"]
        examples = read_examples(path, e["icl_task_type"], e["label"])
        random.Random(SHUFFLE_SEED).shuffle(examples)
        examples = examples[:limit] if limit is not None else examples
        if e["num_fewshot"] >= len(examples):
            raise ValueError(
                f"CORE task {e['label']!r}: {e['num_fewshot']}-shot needs more than "
                f"{e['num_fewshot']} examples, {path} gives {len(examples)}"
                + (f" with --limit {limit}; raise --limit." if limit is not None else ".")
            )
        tasks.append(
            CoreTask(
                e["label"],
                e["icl_task_type"],
                e["num_fewshot"],
                e["continuation_delimiter"],
                baselines[e["label"]],
                path,
                examples,
            )
        )
    return tasks


def task_labels(root: Path) -> list[str]:
    """The labels of `root`/core.yaml, in its order."""
    return [e["label"] for e in _read_config(root / CONFIG_FILE)]


def _read_config(path: Path) -> list[dict[str, Any]]:
    import yaml  # PyYAML, a dependency of huggingface_hub

    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file. Pass the eval_bundle folder of {BUNDLE_URL}."
        )
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e}).") from e
    tasks = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise ValueError(f"{path}: needs a non-empty list `icl_tasks`.")
    entries = []
    for i, task in enumerate(tasks):
        shots = task.get("num_fewshot") if isinstance(task, dict) else None
        shots = shots[0] if isinstance(shots, list) and shots else shots
        if not (
            isinstance(task, dict)
            and isinstance(task.get("label"), str)
            and isinstance(task.get("dataset_uri"), str)
            and task.get("icl_task_type") in TASK_TYPES
            and isinstance(shots, int)
            and shots >= 0
            and isinstance(task.get("continuation_delimiter", " "), str)
        ):
            raise ValueError(
                f"{path}: icl_tasks[{i}] needs label, dataset_uri, num_fewshot (a list of "
                f"counts), icl_task_type (one of {', '.join(TASK_TYPES)}) and optionally "
                f"continuation_delimiter; it is {task!r}."
            )
        entries.append(
            {**task, "num_fewshot": shots,
             "continuation_delimiter": task.get("continuation_delimiter", " ")}
        )  # fmt: skip
    return entries


def _read_baselines(path: Path) -> dict[str, float]:
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file. Pass the eval_bundle folder of {BUNDLE_URL}."
        )
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for lineno, row in enumerate(rows, start=2):
        try:
            out[row["Eval Task"]] = float(row["Random baseline"])
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{path}:{lineno}: needs columns 'Eval Task' and 'Random baseline' (a number "
                f"in percent); got {row!r}."
            ) from e
    return out


def read_examples(path: Path, task_type: str, label: str) -> list[dict[str, Any]]:
    """The examples of one task file, each checked for its type's fields."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (the data of CORE task {label!r}). Restore the bundle from "
            f"{BUNDLE_URL}."
        )
    examples = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                ex = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e}).") from e
            if not is_example(ex, task_type):
                raise ValueError(
                    f"{path}:{lineno}: not a {task_type} example (CORE task {label!r}); it "
                    f"needs {FIELDS[task_type]}."
                )
            examples.append(ex)
    if not examples:
        raise ValueError(f"{path}: no examples (CORE task {label!r}).")
    return examples


def is_example(ex: Any, task_type: str) -> bool:
    if not isinstance(ex, dict):
        return False
    if task_type == "language_modeling":
        return _is_text(ex.get("context")) and _is_text(ex.get("continuation"))
    options = ex.get("choices" if task_type == "multiple_choice" else "context_options")
    text = ex.get("query" if task_type == "multiple_choice" else "continuation")
    gold = ex.get("gold")
    return (
        _is_text(text)
        and isinstance(options, list)
        and len(options) > 0
        and all(_is_text(o) for o in options)
        and isinstance(gold, int)
        and not isinstance(gold, bool)
        and 0 <= gold < len(options)
    )


def _is_text(value: Any) -> bool:
    """Text, or a number the prompt template prints as text (nanochat renders with str())."""
    return isinstance(value, str | int | float) and not isinstance(value, bool)
