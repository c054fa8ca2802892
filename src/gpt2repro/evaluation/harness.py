"""lm-evaluation-harness model type `gpt2repro`: any gpt2repro model source under the harness.

Importing this module registers the model type with lm-eval's model registry (the one side
effect it has; lm-eval must be installed: `pip install 'gpt2repro[eval]'`). lm-eval 0.4
looks models up only in that registry and has no plugin entry points, so the plain
`lm_eval` console script cannot know `gpt2repro` until something imports this module, and
`--include_path` does not help (task YAML functions are imported after the model is
built). What works:

    python -m gpt2repro.evaluation.harness --model gpt2repro \\
        --model_args checkpoint=runs_out/x/checkpoints/best --tasks gpt2_zeroshot
        lm-eval's own command line and flags, with the model type registered and the GPT-2
        suite (`gpt2_suite/`) on the task path; the `gpt2repro-lm-eval` script is the same.
    gpt2repro eval CHECKPOINT --tasks lm_eval:lambada_openai
    import gpt2repro.evaluation.harness; lm_eval.simple_evaluate(model="gpt2repro", ...)

`--model_args`: checkpoint (or pretrained) = a checkpoint directory, an exported Hugging
Face directory, a hub id or init:PRESET; tokenizer, device, dtype, batch_size, max_length,
max_gen_toks. Requests are scored exactly as the harness's `hf` model type scores them
(same tokenisation of context and continuation, left truncation, rolling windows), so
the two agree on the same weights. Runs as a single process (rank 0 of 1).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
from tqdm import tqdm

from gpt2repro.checkpoint import unwrap
from gpt2repro.model import KVCache
from gpt2repro.parallelize import autocast, resolve_dtype
from gpt2repro.runtime import resolve_device
from gpt2repro.sampling import SamplingConfig, cache_dtype, next_token
from gpt2repro.tokenizer import Tokenizer

log = logging.getLogger(__name__)
SUITE_DIR = Path(__file__).parent / "gpt2_suite"
"""Task definitions for the GPT-2 paper's zero-shot table (group `gpt2_zeroshot`)."""
SUITE = "gpt2_zeroshot"
DEFAULT_BATCH_SIZE = 8

# ((context, continuation) or None, context tokens, continuation tokens), as TemplateLM passes them.
Request = tuple[tuple[str, str] | None, list[int], list[int]]


@register_model("gpt2repro")
class GPT2ReproLM(TemplateLM):  # type: ignore[misc]
    """A gpt2repro GPT (checkpoint, export, hub id or live model) as an lm-eval model."""

    def __init__(
        self,
        checkpoint: str | None = None,
        pretrained: str | None = None,
        tokenizer: str | Tokenizer | None = None,
        device: str = "auto",
        dtype: str = "fp32",
        batch_size: int | str = DEFAULT_BATCH_SIZE,
        max_length: int | None = None,
        max_gen_toks: int = 256,
        model: torch.nn.Module | None = None,
        max_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        source = checkpoint or pretrained
        if (source is None) == (model is None):
            raise ValueError(
                "Pass the model as --model_args checkpoint=SOURCE (a checkpoint directory, an "
                "exported Hugging Face directory, a hub id such as gpt2, or init:PRESET)."
            )
        if device.startswith("cuda") and not torch.cuda.is_available():
            # lm-eval's command line asks for cuda:0 unless told otherwise; so does its hf type.
            log.warning("device %s requested but CUDA is not available: running on the CPU", device)
            device = "cpu"
        self._device = resolve_device(device)
        if model is None:
            from gpt2repro.loading import load_source

            assert source is not None
            spec = tokenizer if isinstance(tokenizer, str) else None
            loaded = load_source(source, self._device, spec)
            model, tok = loaded.model, loaded.tokenizer
        else:
            if not isinstance(tokenizer, Tokenizer):
                raise ValueError("A live `model` needs its gpt2repro Tokenizer as `tokenizer`.")
            tok = tokenizer
        self.model = model.eval()
        self.tok = tok
        self.dtype = resolve_dtype(dtype, self._device)
        self.batch_size = _parse_batch_size(batch_size)
        block = unwrap(model).config.block_size
        self._max_length = min(max_length or block, block)
        self.max_gen_toks = max_gen_toks
        self.source = source or type(model).__name__

    # ---- what TemplateLM needs ----

    @property
    def eot_token_id(self) -> int:
        return self.tok.eot_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return self.tok.identifier

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs: Any
    ) -> list[int]:
        return self.tok.encode(string)  # GPT-2 adds no BOS token

    def tok_decode(self, tokens: Iterable[int]) -> str:
        return self.tok.decode(list(tokens))

    def get_model_info(self) -> dict[str, Any]:
        gpt = unwrap(self.model)
        return {"model_source": self.source, "model_num_parameters": gpt.num_params()}

    # ---- scoring ----

    @torch.no_grad()
    def _loglikelihood_tokens(
        self, requests: list[Request], disable_tqdm: bool = False, **kwargs: Any
    ) -> list[tuple[float, bool]]:
        """(log-probability of the continuation, whether greedy decoding produces it) per request.

        Longest first, in right-padded batches; the input is context + continuation cut from
        the left to max_length + 1 tokens, minus the last, as in the harness's `hf` model.
        """
        order = sorted(
            range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2])
        )
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="loglikelihood")
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            inputs = []
            for i in batch:
                _, ctx, cont = requests[i]
                assert ctx and cont, f"empty context {ctx} or continuation {cont}"
                inputs.append((ctx + cont)[-(self.max_length + 1) :][:-1])
            T = max(len(x) for x in inputs)
            padded = [x + [self.eot_token_id] * (T - len(x)) for x in inputs]
            idx = torch.tensor(padded, dtype=torch.long, device=self._device)  # (B, T)
            with autocast(self._device, self.dtype):
                logits = self.model(idx)  # (B, T, V)
            for row, (i, x) in enumerate(zip(batch, inputs, strict=True)):
                request, _, cont = requests[i]
                n = len(cont)
                logprobs = F.log_softmax(logits[row, len(x) - n : len(x)].float(), dim=-1)  # (n, V)
                target = torch.tensor(cont, dtype=torch.long, device=self._device)  # (n,)
                greedy = bool((logprobs.argmax(dim=-1) == target).all())
                answer = (float(logprobs.gather(1, target[:, None]).sum()), greedy)
                results[i] = answer
                if request is not None:
                    self.cache_hook.add_partial("loglikelihood", request, answer)
            bar.update(len(batch))
        bar.close()
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Log-probability of whole documents, in disjoint windows of max_length tokens."""
        windows: list[Request] = []
        owners: list[int] = []
        for k, request in enumerate(requests):
            (text,) = request.args
            for ctx, cont in map(
                lm_utils.make_disjoint_window,
                lm_utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owners.append(k)
        scores = self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)
        totals = [0.0] * len(requests)
        for k, (logprob, _) in zip(owners, scores, strict=True):
            totals[k] += logprob
        for request, total in zip(requests, totals, strict=True):
            self.cache_hook.add_partial("loglikelihood_rolling", (request.args[0],), total)
        return totals

    @torch.no_grad()
    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample) continuations, cut at the first stop sequence."""
        eos = self.tok_decode([self.eot_token_id])
        outputs = []
        for request in tqdm(requests, disable=disable_tqdm, desc="generate_until"):
            context, gen_kwargs = request.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_new = int(kwargs.pop("max_gen_toks"))
            if max_new >= self.max_length:
                raise ValueError(
                    f"max_gen_toks={max_new} leaves no room for a prompt in the model's "
                    f"context of {self.max_length} tokens."
                )
            cfg = SamplingConfig(
                max_new_tokens=max_new,
                temperature=float(kwargs.get("temperature", 0.0)),
                top_k=kwargs.get("top_k"),
                top_p=kwargs.get("top_p"),
            )
            prompt = self.tok_encode(context)[-(self.max_length - max_new) :] or [self.eot_token_id]
            text = self._generate(prompt, cfg, until)
            for stop in until:
                text = text.split(stop)[0]
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            outputs.append(text)
        return outputs

    def _generate(self, prompt: list[int], cfg: SamplingConfig, until: list[str]) -> str:
        """Decode token by token with the KV cache until a stop sequence or max_new_tokens."""
        gpt = unwrap(self.model)  # uncompiled: one token at a time would recompile
        param = next(gpt.parameters())
        idx = torch.tensor([prompt], dtype=torch.long, device=self._device)  # (1, T)
        new: list[int] = []
        with autocast(self._device, self.dtype):
            size = len(prompt) + cfg.max_new_tokens
            cache = KVCache(gpt.config, 1, size, param.device, cache_dtype(param))
            logits = gpt(idx, cache=cache)[:, -1, :]  # (1, V)
            for _ in range(cfg.max_new_tokens):
                tok = next_token(logits, cfg, None)  # (1, 1)
                new.append(int(tok))
                if new[-1] == self.eot_token_id or any(s in self.tok_decode(new) for s in until):
                    break
                logits = gpt(tok, cache=cache)[:, -1, :]
        return self.tok_decode(new)


def task_manager(include_defaults: bool = True, extra: list[Path] | None = None) -> Any:
    """lm-eval's TaskManager over its own tasks and the GPT-2 suite (indexing takes ~10 s)."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in [SUITE_DIR, *(extra or [])]]
    return TaskManager(include_path=paths, include_defaults=include_defaults)


def run_tasks(
    lm: GPT2ReproLM,
    tasks: list[str],
    limit: int | None = None,
    bootstrap_iters: int = 1000,
    manager: Any = None,
    log_samples: bool = False,
) -> dict[str, Any]:
    """simple_evaluate's output for harness tasks or groups (names, or paths of task YAMLs)."""
    from lm_eval import simple_evaluate

    manager = check_tasks(tasks, manager)
    try:
        output: dict[str, Any] = simple_evaluate(
            model=lm,
            tasks=tasks,
            limit=limit,
            bootstrap_iters=bootstrap_iters,
            task_manager=manager,
            log_samples=log_samples,
        )
    except ConnectionError as e:  # `datasets` could not reach the hub for a task's data
        raise ConnectionError(f"lm-eval: {e}. {OFFLINE_ADVICE}") from e
    return output


OFFLINE_ADVICE = (
    "Each lm-eval task reads its dataset from the Hugging Face hub. Without network access, "
    "run the same evaluation once on a connected machine, copy its `datasets` cache "
    "(~/.cache/huggingface) here and set HF_DATASETS_OFFLINE=1; or pass a task YAML of your "
    "own (lm_eval:PATH.yaml) whose dataset points at local files."
)


def check_tasks(tasks: list[str], manager: Any = None) -> Any:
    """lm-eval's task index (built when not given), once every name in `tasks` is in it."""
    manager = manager or task_manager()
    unknown = [t for t in tasks if t not in manager.all_tasks and not Path(t).is_file()]
    if unknown:
        raise ValueError(
            f"Unknown lm-eval task(s): {', '.join(unknown)}. The GPT-2 suite is {SUITE} "
            f"({', '.join(_suite_members())}); `lm-eval ls tasks` lists the harness's own."
        )
    return manager


def _suite_members() -> list[str]:
    return sorted(p.stem for p in SUITE_DIR.glob("gpt2_*.yaml"))


def _parse_batch_size(value: int | str) -> int:
    """An integer batch size; lm-eval's `auto` (probing for the largest) becomes the default."""
    if isinstance(value, str) and value.startswith("auto"):
        return DEFAULT_BATCH_SIZE
    try:
        size = int(value)
    except ValueError:
        raise ValueError(f"batch_size={value!r} must be a positive integer or auto.") from None
    if size < 1:
        raise ValueError(f"batch_size={size} must be a positive integer or auto.")
    return size


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the `gpt2repro` model type and the GPT-2 suite available."""
    from lm_eval.__main__ import cli_evaluate

    args = list(sys.argv[1:] if argv is None else argv)
    asks_help = len(args) <= 1 or "-h" in args or "--help" in args
    given = any(a == "--include_path" or a.startswith("--include_path=") for a in args)
    if not (asks_help or given):  # a user's own --include_path replaces the suite's
        args += ["--include_path", str(SUITE_DIR)]
    sys.argv = ["lm-eval", *args]
    cli_evaluate()


if __name__ == "__main__":
    main()
