"""Arguments and entry points of `gpt2repro eval`, `gpt2repro plot` and `gpt2repro card`.

Each `*Args` dataclass is parsed by tyro in `gpt2repro.cli` (field docstrings become
--help); each `run_*` function raises ValueError / FileNotFoundError / ConnectionError for
user mistakes and prints a short summary on success.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import tyro

from gpt2repro.evaluation.report import (
    default_results_path,
    format_table,
    task_entry,
    write_results,
)

LM_EVAL_PREFIX = "lm_eval:"
CORE_PREFIX = "core:"
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")


@dataclass
class EvalArgs:
    """Evaluate a model: validation loss / perplexity / bits per byte, HellaSwag, the CORE score, lm-evaluation-harness tasks."""

    model: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="MODEL")]
    """Checkpoint directory, training run directory (its best checkpoint), exported Hugging Face directory, hub id (gpt2, gpt2-medium, ...) or init:PRESET."""
    tasks: tuple[str, ...] = ("hellaswag",)
    """val (on --data; a checkpoint defaults to the dataset it was trained on), hellaswag, core (DCLM's 22-task CORE score, as nanochat reports it) or core:LABEL for one of its tasks, or lm_eval:TASK for a harness task or group, e.g. lm_eval:gpt2_zeroshot (the GPT-2 paper's table) or lm_eval:lambada_openai."""
    data: str | None = None
    """For val: a prepared dataset folder (holding manifest.json), or its name under --data-root; prepared with the model's tokenizer (default for a checkpoint: the dataset it was trained on)."""
    data_root: Path = Path("data")
    """Folder of prepared datasets, where --data NAME is looked up (and a checkpoint's training dataset, after the data root it was trained with)."""
    split: str = "val"
    """Split of --data to evaluate."""
    val_tokens: int | None = 10_485_760
    """Token budget for val (fixed, so runs compare: modded-nanogpt's 10,485,760 and EvalConfig's default; the shakespeare_cpu preset evaluates 1,048,576); None: the whole split."""
    seq_len: int | None = None
    """Sequence length for val (default: the model's context, at most 1024)."""
    hellaswag_path: Path | None = None
    """Local hellaswag_val.jsonl (default: downloaded from rowanz/hellaswag on GitHub and cached)."""
    core_path: Path | None = None
    """Local CORE bundle: the eval_bundle folder (holding core.yaml) unzipped from nanochat's eval_bundle.zip (default: downloaded and cached)."""
    limit: int | None = None
    """Only the first N examples of HellaSwag, of each CORE task (after nanochat's fixed shuffle) and of each lm-eval task (a quick look, not a result)."""
    batch_size: int = 8
    """Sequences (val, lm-eval) or examples (HellaSwag, 4 rows each) per forward pass; CORE packs up to 4 x this many rows."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    dtype: str = "auto"
    """auto (bf16 on capable hardware, else fp32), fp32, bf16 or fp16."""
    compile: bool = False
    """torch.compile the model for val and HellaSwag."""
    tokenizer: str | None = None
    """Override the model's tokenizer: gpt2 or a tokenizer .json file."""
    bootstrap_iters: int = 1000
    """Bootstrap resamples for lm-eval's perplexity standard errors (0: none)."""
    out: Path | None = None
    """Results JSON (default: eval_results.json in the model's directory; for hub ids ./eval_results/)."""
    seed: int = 1337
    """Seed for init:PRESET models."""


@dataclass
class PlotArgs:
    """Plot loss (against steps and tokens) and HellaSwag of one or more runs, with GPT-2 / GPT-3 reference lines."""

    run_dirs: Annotated[tuple[Path, ...], tyro.conf.Positional, tyro.conf.arg(metavar="RUN_DIR")]
    """Run directories written by `gpt2repro train` (several are overlaid)."""
    out_dir: Path | None = None
    """Where the PNGs go (default: the run directory for one run, ./plots for several)."""
    references: str = "auto"
    """Reference lines: auto (loss lines only for runs on that dataset with GPT-2's tokenizer), all or none."""


@dataclass
class CardArgs:
    """Write a Hugging Face model card (README.md) next to an export of a checkpoint."""

    checkpoint: Annotated[Path, tyro.conf.Positional, tyro.conf.arg(metavar="CHECKPOINT")]
    """Checkpoint directory, training run directory (its best checkpoint) or an exported Hugging Face directory."""
    export_dir: Path | None = None
    """Exported model folder; exported here first unless it holds one (default: CHECKPOINT-hf)."""
    name: str | None = None
    """Model name in the card (default: the run directory's name)."""
    license: str = "mit"
    """License identifier for the card's metadata."""


def _check_eval_args(args: EvalArgs, knows_dataset: bool) -> None:
    """Every bad argument in one error; `knows_dataset`: the model records its training data."""
    problems = []
    for task in args.tasks:
        if task not in ("val", "hellaswag", "core") and not any(
            task.startswith(p) and len(task) > len(p) for p in (LM_EVAL_PREFIX, CORE_PREFIX)
        ):
            problems.append(
                f"unknown task {task!r} (use val, hellaswag, core, core:LABEL or lm_eval:TASK)"
            )
    if not args.tasks:
        problems.append("no tasks given (use --tasks val hellaswag lm_eval:TASK ...)")
    if "val" in args.tasks and args.data is None and not knows_dataset:
        problems.append(
            "the val task needs --data, a dataset folder from `gpt2repro prepare` (this model "
            "records no training dataset)"
        )
    for name in ("limit", "val_tokens", "seq_len"):
        value = getattr(args, name)
        if value is not None and value < 1:
            problems.append(f"--{name.replace('_', '-')} {value} must be at least 1")
    if args.batch_size < 1:
        problems.append(f"--batch-size {args.batch_size} must be at least 1")
    if args.dtype not in DTYPE_CHOICES:
        problems.append(f"--dtype {args.dtype} must be one of {', '.join(DTYPE_CHOICES)}")
    if args.bootstrap_iters < 0:
        problems.append(f"--bootstrap-iters {args.bootstrap_iters} must be 0 or more")
    if problems:
        raise ValueError("Cannot evaluate: " + "; ".join(problems) + ".")


def run_eval(args: EvalArgs) -> dict[str, dict[str, Any]]:
    """Evaluate, print a table and write (merge) the results JSON; returns the new entries."""
    import torch

    from gpt2repro.distributed import dist_info_from_env, init_distributed, shutdown
    from gpt2repro.loading import load_source, resolve_source
    from gpt2repro.parallelize import configure_backends, resolve_dtype
    from gpt2repro.runtime import resolve_device, seed_everything

    source = resolve_source(args.model, quiet=not dist_info_from_env().is_main)
    core_table = ""
    trained_on = _trained_on(source)
    _check_eval_args(args, trained_on is not None)
    device = resolve_device(args.device)
    dist = init_distributed(device)  # under torchrun: val and HellaSwag split across ranks
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    dtype = resolve_dtype(args.dtype, device)
    configure_backends(device)
    seed_everything(args.seed)
    loaded = load_source(source, device, args.tokenizer)
    model: torch.nn.Module = loaded.model.eval()
    if args.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    tok = loaded.tokenizer
    path = args.out or default_results_path(source)
    results: dict[str, dict[str, Any]] = {}

    def finished(entries: dict[str, dict[str, Any]]) -> None:
        # Written as each task ends: a later task's failure loses nothing already computed.
        results.update(entries)
        if dist.is_main:
            write_results(path, entries, _model_record(source, loaded))

    try:
        # Every input is found and checked before the first forward pass.
        val_data = _val_dataset(args, tok, trained_on, dist) if "val" in args.tasks else None
        if val_data is not None:
            from gpt2repro.data.verify import check_split_counts

            check_split_counts(val_data, args.split, tok)  # bits per byte divides by them
        examples = None
        if "hellaswag" in args.tasks:
            from gpt2repro.evaluation.hellaswag import load_examples

            examples = load_examples(args.hellaswag_path, args.limit)
        core = _core_tasks(args, dist)
        lm_tasks = [
            t.removeprefix(LM_EVAL_PREFIX) for t in args.tasks if t.startswith(LM_EVAL_PREFIX)
        ]
        lm_tasks = lm_tasks if dist.is_main else []  # the harness runs as one process
        manager = _lm_eval_tasks(lm_tasks) if lm_tasks else None
        if val_data is not None:
            finished(_val(args, val_data, model, tok, device, dtype, dist))
        if examples is not None:
            finished(_hellaswag(examples, model, tok, device, dtype, dist, args.batch_size))
        if core is not None:
            core_table = _core(args, core, model, tok, device, dtype, dist, finished)
        if lm_tasks:
            finished(_lm_eval(args, loaded, lm_tasks, manager, device, dtype))
    finally:
        shutdown()
    if dist.is_main:
        print(format_table(results))
        if core_table:
            print(core_table)
        print(f"wrote {path}")
    return results


def _trained_on(source: str) -> dict[str, Any] | None:
    """The data settings a checkpoint was trained with (None: not a checkpoint, or none recorded)."""
    from gpt2repro import checkpoint as ckpt

    path = Path(source)
    if not (path.is_dir() and ckpt.is_checkpoint(path)):
        return None
    config = ckpt.read_meta(path).get("config")  # checkpoints saved outside `train` have none
    data = config.get("data") if isinstance(config, dict) else None
    return data if isinstance(data, dict) and isinstance(data.get("dataset"), str) else None


def _val_dataset(args: EvalArgs, tok: Any, trained_on: dict[str, Any] | None, dist: Any) -> Path:
    from gpt2repro.data.loader import read_manifest
    from gpt2repro.data.locate import resolve_dataset
    from gpt2repro.distributed import print0

    if args.data is not None:
        data = resolve_dataset(args.data, args.data_root, tok.spec)
    else:
        assert trained_on is not None, "_check_eval_args lets val without --data through"
        data = _training_dataset(trained_on, args.data_root, tok)
        print0(dist, f"val: using the dataset the checkpoint was trained on: {data}")
    ident = read_manifest(data)["tokenizer"]["identifier"]
    if ident != tok.identifier:
        raise ValueError(
            f"{data} was tokenized with {ident!r}, but the model uses {tok.identifier!r}. "
            f"Prepare the same text with the model's tokenizer (`gpt2repro prepare ... "
            f"--tokenizer {tok.spec}`) and compare models by bits per byte."
        )
    return data


def _training_dataset(trained_on: dict[str, Any], data_root: Path, tok: Any) -> Path:
    """The prepared dataset a checkpoint was trained on, found as training found it: by name
    (or folder) under the data root the run used, then under --data-root."""
    from gpt2repro.data.locate import find_prepared

    name = trained_on["dataset"]
    roots = list(dict.fromkeys([Path(trained_on.get("data_root") or "data"), data_root]))
    for root in roots:
        found = find_prepared(root, name, tok)
        if found is not None:
            return found
    raise FileNotFoundError(
        f"val: the checkpoint was trained on {name!r} ({tok.identifier} tokens), not found "
        f"under {' or '.join(str(r) for r in roots)}. Pass --data with its prepared folder, or "
        f"--data-root with the folder it was prepared in."
    )


def _val(
    args: EvalArgs, data: Path, model: Any, tok: Any, device: Any, dtype: str, dist: Any
) -> dict:
    from gpt2repro.data.loader import read_manifest
    from gpt2repro.evaluation.val import split_loss

    block = _block_size(model)
    seq_len = args.seq_len or min(block, 1024)
    if seq_len > block:
        raise ValueError(f"--seq-len {seq_len} exceeds the model's context of {block} tokens.")
    r = split_loss(
        model,
        data,
        args.split,
        args.batch_size,
        seq_len,
        args.val_tokens,
        device,
        dtype,
        dist,
        tokenizer=tok,
    )
    split = read_manifest(data)["splits"][args.split]
    info = {"seq_len": seq_len, "split_tokens": split["tokens"], "split_bytes": split["bytes"]}
    metrics = {k: float(r[k]) for k in ("loss", "ppl", "bpb")}
    name = f"val:{data.resolve().name}/{args.split}"
    return {name: task_entry(metrics, samples=int(r["tokens"]), info=info)}


def _hellaswag(
    examples: list[dict[str, Any]],
    model: Any,
    tok: Any,
    device: Any,
    dtype: str,
    dist: Any,
    batch_size: int,
) -> dict:
    from gpt2repro.evaluation.hellaswag import METRICS, VAL_EXAMPLES, hellaswag_eval

    r = hellaswag_eval(model, examples, tok, device, dtype, dist, batch_size)
    metrics = {m: r[m] for m in METRICS}
    stderr = {m: r[f"{m}_stderr"] for m in METRICS}
    # Only the full validation set compares with the published numbers (0.2955 for GPT-2 124M).
    info = {"style": "completion (llm.c)", "full_validation_set": r["n"] == VAL_EXAMPLES}
    return {"hellaswag": task_entry(metrics, stderr, int(r["n"]), info)}


def _core_tasks(args: EvalArgs, dist: Any) -> tuple[list[Any], bool] | None:
    """The CORE tasks asked for, read and checked, and whether they are the whole of core.yaml."""
    if not any(t == "core" or t.startswith(CORE_PREFIX) for t in args.tasks):
        return None
    from gpt2repro.distributed import broadcast_object
    from gpt2repro.evaluation.core_bundle import fetch_bundle, read_bundle, task_labels

    # Rank 0 downloads (once), the others wait for it and share its failure, if any.
    failure = None
    if dist.is_main:
        try:
            fetch_bundle(args.core_path)
        except (OSError, ValueError) as e:
            failure = e
    failure = broadcast_object(failure, dist)
    if failure is not None:
        raise failure
    root = fetch_bundle(args.core_path)
    labels = [t.removeprefix(CORE_PREFIX) for t in args.tasks if t.startswith(CORE_PREFIX)]
    whole = "core" in args.tasks
    tasks = read_bundle(root, None if whole else list(dict.fromkeys(labels)), args.limit)
    return tasks, {t.label for t in tasks} == set(task_labels(root))  # the mean needs them all


def _core(
    args: EvalArgs, core: tuple[list[Any], bool], model: Any, tok: Any, device: Any,
    dtype: str, dist: Any, finished: Any,
) -> str:  # fmt: skip
    """Scores the CORE tasks, hands their entries to `finished`; returns the table to print."""
    from gpt2repro.evaluation.core import core_entries, core_eval, format_core

    tasks, complete = core
    scores = core_eval(model, tasks, tok, device, dtype, dist, args.batch_size)
    finished(core_entries(scores, tasks, complete, args.limit))
    return format_core(scores) if complete else ""


def _lm_eval_tasks(tasks: list[str]) -> Any:
    """lm-eval's task index, once `tasks` are known to be in it (before any compute)."""
    try:
        from gpt2repro.evaluation.harness import check_tasks
    except ImportError as e:
        raise ValueError(
            f"lm_eval: tasks need lm-evaluation-harness ({e}). Install it with "
            "`pip install 'gpt2repro[eval]'`."
        ) from e
    return check_tasks(tasks)


def _lm_eval(
    args: EvalArgs, loaded: Any, tasks: list[str], manager: Any, device: Any, dtype: str
) -> dict:
    from gpt2repro.evaluation.harness import GPT2ReproLM, run_tasks
    from gpt2repro.evaluation.report import from_lm_eval

    lm = GPT2ReproLM(
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        device=str(device),
        dtype=dtype,
        batch_size=args.batch_size,
    )
    lm.source = loaded.source
    output = run_tasks(
        lm, tasks, limit=args.limit, bootstrap_iters=args.bootstrap_iters, manager=manager
    )
    return from_lm_eval(output)


def _block_size(model: Any) -> int:
    from gpt2repro.checkpoint import unwrap

    return unwrap(model).config.block_size


def _model_record(source: str, loaded: Any) -> dict[str, Any]:
    """What was evaluated: source, size, shape, tokenizer, and training progress for checkpoints."""
    from gpt2repro import checkpoint as ckpt

    record: dict[str, Any] = {
        "source": source,
        "parameters": loaded.model.num_params(),
        "config": asdict(loaded.model.config),
        "tokenizer": loaded.tokenizer.identifier,
    }
    path = Path(source)
    if path.is_dir() and ckpt.is_checkpoint(path):
        meta = ckpt.read_meta(path)
        record |= {"step": meta.get("step"), "tokens": meta.get("train_state", {}).get("tokens")}
    return record


def run_plot(args: PlotArgs) -> list[Path]:
    from gpt2repro.plot import plot_runs

    if not args.run_dirs:
        raise ValueError("Pass at least one run directory.")
    out_dir = args.out_dir or (args.run_dirs[0] if len(args.run_dirs) == 1 else Path("plots"))
    written = plot_runs(list(args.run_dirs), out_dir, args.references)
    for path in written:
        print(f"wrote {path}")
    return written


def run_card(args: CardArgs) -> Path:
    from gpt2repro.evaluation.card import write_card

    readme = write_card(args.checkpoint, args.export_dir, args.name, args.license)
    print(f"wrote {readme}")
    return readme
