"""lm-evaluation-harness: the `gpt2repro` model type against the harness's own `hf` type, on the GPT-2 suite.

Both model types get the same weights (a tiny GPT exported with export_hf, plus GPT-2's
tokenizer files built from our BPE ranks, since the Hub is out of reach) and every task of
the `gpt2_zeroshot` group runs through the harness's real `simple_evaluate`, on small
local files in each task's dataset format.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")  # the harness's hf model type needs it
transformers = pytest.importorskip("transformers")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from gpt2repro.evaluation import harness  # noqa: E402
from gpt2repro.model import GPT, GPTConfig  # noqa: E402
from gpt2repro.pretrained import export_hf  # noqa: E402
from gpt2repro.tokenizer import GPT2Tokenizer  # noqa: E402

HARNESS_TASKS = Path(lm_eval.__file__).parent / "tasks"


# ---- GPT-2's tokenizer files from tiktoken's ranks ----


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for every byte (its vocab.json spells tokens with them)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    mapping = {b: chr(b) for b in keep}
    extra = (b for b in range(256) if b not in mapping)
    mapping |= {b: chr(256 + n) for n, b in enumerate(extra)}
    return mapping


def merge_of(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two tokens BPE merged into `token`: replay BPE with only the merges ranked below it."""
    rank = ranks[token]
    splits = [(token[:i], token[i:]) for i in range(1, len(token))]
    valid = [(a, b) for a, b in splits if ranks.get(a, rank) < rank and ranks.get(b, rank) < rank]
    if len(valid) == 1:
        return valid[0]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        pairs = [(ranks.get(a + b, rank), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
        best, i = min(pairs)
        assert best < rank, (token, parts)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def write_gpt2_tokenizer_files(out: Path) -> None:
    ranks = GPT2Tokenizer().encoding._mergeable_ranks
    char = bytes_to_unicode()
    spell = lambda token: "".join(char[b] for b in token)  # noqa: E731
    vocab = {spell(t): r for t, r in ranks.items()} | {"<|endoftext|>": 50256}
    merges = [
        merge_of(ranks, t) for t, _ in sorted(ranks.items(), key=lambda kv: kv[1]) if len(t) > 1
    ]
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{spell(a)} {spell(b)}" for a, b in merges]
    (out / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32)
    out = export_hf(GPT(config), tmp_path_factory.mktemp("export") / "tiny", "gpt2")
    write_gpt2_tokenizer_files(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "The café's menu:  two\teggs, 3 pancakes.\n\nIt isn't — ¿no?"
    assert hf_tok.encode(text) == GPT2Tokenizer().encode(text)
    return out


# ---- small local datasets in the tasks' formats ----

STORY = [
    "Once upon a time there lived a miller who was very poor .",
    "He had three sons , a mill , a donkey and a cat .",
    "The sons had to grind the corn , the donkey had to carry the sacks .",
    "`` What shall I do now ? '' asked the youngest son .",
    "The cat had to catch the mice that lived in the mill .",
]
OPTIONS = ["cat", "donkey", "mill", "corn", "sacks", "son", "mice", "miller", "time", "king"]
NAMES = ["Tom", "Anna", "Peter", "Mary", "John", "Lucy", "Paul", "Grace", "Henry", "Rose"]
ENWIK8 = (
    "<mediawiki><page><title>AccessibleComputing</title><id>10</id><revision><text>"
    + " ".join(f"[[Computer accessibility|Article {i}]] café naïve résumé" for i in range(40))
    + "</text></revision></page></mediawiki>\n"
)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def local_tasks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Group members with their dataset replaced by local json files in the same format."""
    d = tmp_path_factory.mktemp("data")
    cbt = [
        {
            "sentences": [STORY[i % 5] for i in range(20)],
            "question": f"The {blank} looked at the XXXXX and smiled .",
            "answer": options[k],
            "options": options,
        }
        for k, (blank, options) in enumerate((("son", OPTIONS), ("miller", NAMES)))
    ]
    files = {
        "lambada_openai": [
            {
                "text": "The miller gave the mill to his eldest son, the donkey to the second, and to the youngest the cat"
            },
            {
                "text": "She opened the door and saw the garden covered in snow, white and silent as a sheet of paper"
            },
        ],
        "gpt2_cbt_cn": cbt[:1],
        "gpt2_cbt_ne": cbt[1:],
        "wikitext": [
            {
                "page": " = Valkyria Chronicles = \n \n The game began development in 2010 , carrying over a large portion of the work . \n"
            },
        ],
        "gpt2_wikitext103": [
            {
                "page": " = Robert Boulter = \n \n Robert Boulter is an English film , television and theatre actor . \n"
            },
            {
                "page": " = = Career = = \n \n In 2006 , he starred alongside Whishaw in the play Citizenship @-@ written by Mark Ravenhill . \n"
            },
        ],
        "gpt2_ptb": [
            {"sentence": " the company said it expects <unk> sales to rise N % next year "},
            {"sentence": " mr. smith declined to comment on the report "},
            {"sentence": " shares closed at $ N a share down N cents "},
        ],
        "gpt2_1bw": [
            {
                "text": "The U.S. economy added 200,000 jobs last month , the Labor Department said ."
            },
            {"text": "`` We are very pleased with the results , '' he said ."},
        ],
        "gpt2_enwik8": [{"text": ENWIK8}],
        "gpt2_text8": [
            {
                "text": " anarchism originated as a term of abuse first used against early working class radicals"
            }
        ],
    }
    split = {"gpt2_enwik8": "train"}
    members = []
    for task, rows in files.items():
        path = write_jsonl(d / f"{task}.jsonl", rows)
        members.append(
            {
                "task": task,
                "dataset_path": "json",
                "dataset_name": None,
                "dataset_kwargs": {
                    "data_files": {split.get(task, "test"): path},
                    "cache_dir": str(d / "hf_datasets"),
                },
                "training_split": None,
                "validation_split": None,
            }
        )
    return members


@pytest.fixture(scope="module")
def manager() -> TaskManager:
    """The suite plus the two harness tasks it uses, without indexing all of the harness (~10 s)."""
    return harness.task_manager(
        include_defaults=False, extra=[HARNESS_TASKS / "lambada", HARNESS_TASKS / "wikitext"]
    )


def evaluate(model: Any, tasks: list[Any], manager: TaskManager, **kwargs: Any) -> dict[str, Any]:
    os.environ["DISABLE_MULTIPROC"] = "1"  # bootstrap in-process
    out: dict[str, Any] = lm_eval.simple_evaluate(
        model=model,
        tasks=tasks,
        task_manager=manager,
        bootstrap_iters=10,
        log_samples=True,
        **kwargs,
    )
    return out


def numbers(sample: dict[str, Any]) -> list[float]:
    """The log-likelihoods in one logged sample's responses."""
    flat: list[float] = []
    for resp in sample["resps"]:
        for value in resp:
            flat.extend([value[0]] if isinstance(value, tuple | list) else [value])
    return [float(v) for v in flat]


def test_the_suite_is_the_gpt2_papers_table(manager: TaskManager) -> None:
    assert harness.SUITE in manager.all_groups
    members = [
        "gpt2_cbt_cn",
        "gpt2_cbt_ne",
        "gpt2_wikitext103",
        "gpt2_enwik8",
        "gpt2_text8",
        "gpt2_ptb",
        "gpt2_1bw",
    ]
    assert set(members) <= set(manager.all_subtasks)
    group = manager.task_index[harness.SUITE].cfg  # the YAML as read (building it would download)
    assert set(group["task"]) == {*members, "lambada_openai", "wikitext"}


def test_gpt2repro_and_hf_model_types_agree_on_the_suite(
    export_dir: Path, local_tasks: list[dict[str, Any]], manager: TaskManager
) -> None:
    suite_spec = [{"group": "gpt2_zeroshot_local", "task": local_tasks}]
    ours_lm = harness.GPT2ReproLM(checkpoint=str(export_dir), device="cpu", batch_size=4)
    ours = evaluate(ours_lm, suite_spec, manager)
    hf = evaluate(
        "hf", suite_spec, manager,
        model_args={"pretrained": str(export_dir), "dtype": "float32"}, device="cpu", batch_size=4,
    )  # fmt: skip
    expected_metrics = {
        "lambada_openai": {"acc", "perplexity"},
        "gpt2_cbt_cn": {"acc"},
        "gpt2_cbt_ne": {"acc"},
        "wikitext": {"word_perplexity", "byte_perplexity", "bits_per_byte"},
        "gpt2_wikitext103": {"word_perplexity"},
        "gpt2_ptb": {"word_perplexity"},
        "gpt2_1bw": {"word_perplexity"},
        "gpt2_enwik8": {"bits_per_byte"},
        "gpt2_text8": {"bits_per_byte"},
    }
    for task, metric_names in expected_metrics.items():
        got = {k.split(",")[0]: v for k, v in ours["results"][task].items() if k.endswith(",none")}
        want = {k.split(",")[0]: v for k, v in hf["results"][task].items() if k.endswith(",none")}
        assert metric_names <= set(got), (task, got)
        for name in metric_names:
            assert got[name] == pytest.approx(want[name], rel=1e-4), (task, name)
        ours_ll = [x for s in ours["samples"][task] for x in numbers(s)]
        hf_ll = [x for s in hf["samples"][task] for x in numbers(s)]
        assert len(ours_ll) == len(hf_ll) > 0
        assert ours_ll == pytest.approx(hf_ll, rel=1e-4, abs=1e-3), task

    # The task definitions do what they say: enwik8's test set is the last 5% of the bytes;
    # word perplexity is per word of the original tokenization; CBT scores candidate + rest.
    (enwik8,) = ours["samples"]["gpt2_enwik8"]
    tail = ENWIK8.encode()[round(len(ENWIK8.encode()) * 0.95) :].decode(errors="ignore")
    assert enwik8["doc"]["text"] == tail
    (ptb,) = ours["samples"]["gpt2_ptb"]
    words = sum(len(s.split()) + 1 for s in ("the company said it expects <unk> sales to rise N % next year",
                                             "mr. smith declined to comment on the report",
                                             "shares closed at $ N a share down N cents"))  # fmt: skip
    assert ptb["doc"]["words"] == words == 34
    assert ptb["doc"]["text"].endswith("at $N a share down N cents\n")
    ppl = ours["results"]["gpt2_ptb"]["word_perplexity,none"]
    assert ppl == pytest.approx(math.exp(-numbers(ptb)[0] / words), rel=1e-6)
    (cn,) = ours["samples"]["gpt2_cbt_cn"]
    assert cn["doc"]["context"].endswith("lived in the mill. The son looked at the")
    assert '"What shall I do now?" asked' in cn["doc"]["context"]
    assert cn["doc"]["choices"][:2] == ["cat and smiled.", "donkey and smiled."]


def test_generate_until_matches_hf(export_dir: Path) -> None:
    from lm_eval.models.huggingface import HFLM

    hf = HFLM(pretrained=str(export_dir), device="cpu", batch_size=2, dtype="float32")
    ours = harness.GPT2ReproLM(checkpoint=str(export_dir), device="cpu", batch_size=2)
    requests = [
        Instance("generate_until", {}, ("Once upon a time", {"until": ["."], "max_gen_toks": 12, "do_sample": False}), 0),
        Instance("generate_until", {}, ("Q: What is the capital of France?\nA:", {"until": ["\n"], "max_gen_toks": 8}), 1),
    ]  # fmt: skip
    assert ours.generate_until(requests) == hf.generate_until(requests)


def test_lm_eval_command_line_with_the_gpt2repro_model_type(
    export_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`python -m gpt2repro.evaluation.harness` is lm-eval's CLI with `--model gpt2repro` known.

    Indexing every harness task costs ~10 s, so this in-process run indexes only the suite;
    the `slow` test below runs the real command.
    """
    task = tiny_task_yaml(tmp_path)
    real_init = TaskManager.__init__
    monkeypatch.setattr(
        TaskManager,
        "__init__",
        lambda self, *a, **kw: real_init(self, *a, **{**kw, "include_defaults": False}),
    )
    argv = [
        "--model",
        "gpt2repro",
        "--model_args",
        f"checkpoint={export_dir}",
        "--tasks",
        str(task),
    ]
    harness.main(
        [*argv, "--device", "cpu", "--batch_size", "2", "--output_path", str(tmp_path / "out")]
    )
    printed = printed_metrics(capsys.readouterr().out, "tiny_lambada")
    (written,) = (tmp_path / "out").rglob("results_*.json")
    saved = json.loads(written.read_text())["results"]["tiny_lambada"]
    assert printed.keys() == {"acc", "perplexity"}
    for name, value in printed.items():
        assert value == pytest.approx(saved[f"{name},none"], abs=5e-5, rel=1e-8)
    assert printed == pytest.approx(reference_metrics(export_dir), rel=1e-4)


# The texts' last word is the target. A random GPT with tied embeddings predicts its last
# input token again, so the second target is the greedy one and the first is not.
TINY_TEXTS = [
    "The miller gave his youngest son the cat",
    "The miller gave his youngest son the the",
]


def tiny_task_yaml(tmp_path: Path) -> Path:
    data = write_jsonl(tmp_path / "tiny.jsonl", [{"text": t} for t in TINY_TEXTS])
    task = tmp_path / "tiny_lambada.yaml"
    task.write_text(
        "task: tiny_lambada\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n  cache_dir: {tmp_path / 'cache'}\n"
        "output_type: loglikelihood\ntest_split: test\n"
        "doc_to_text: \"{{text.split(' ')[:-1]|join(' ')}}\"\n"
        "doc_to_target: \"{{' '+text.split(' ')[-1]}}\"\n"
        "metric_list:\n  - metric: acc\n  - metric: perplexity\n"
    )
    return task


def printed_metrics(stdout: str, task: str) -> dict[str, float]:
    """Metric -> value from the markdown table lm-eval prints, for the rows of `task`."""
    values: dict[str, float] = {}
    current = None
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 7 or cells[0].startswith("-"):
            continue
        current = cells[0] or current  # a task's later rows leave its name blank
        if current == task:
            values[cells[4]] = float(cells[6])
    return values


def reference_metrics(export_dir: Path) -> dict[str, float]:
    """acc and perplexity of TINY_TEXTS computed directly with transformers' GPT-2."""
    hf = transformers.GPT2LMHeadModel.from_pretrained(export_dir).eval()
    tok = GPT2Tokenizer()
    lls, greedy = [], []
    for text in TINY_TEXTS:
        context, word = text.rsplit(" ", 1)
        ctx = tok.encode(context)
        cont = tok.encode(f"{context} {word}")[len(ctx) :]
        with torch.no_grad():
            logits = hf(torch.tensor([ctx + cont])).logits[0, len(ctx) - 1 : -1]  # (len(cont), V)
        logprobs = torch.log_softmax(logits, dim=-1)
        target = torch.tensor(cont)
        lls.append(float(logprobs.gather(1, target[:, None]).sum()))
        greedy.append(bool((logprobs.argmax(-1) == target).all()))
    assert greedy == [False, True], greedy  # so acc is neither 0 nor 1
    return {"acc": sum(greedy) / len(greedy), "perplexity": math.exp(-sum(lls) / len(lls))}


@pytest.mark.slow
def test_lm_eval_command_line_as_a_process(export_dir: Path, tmp_path: Path) -> None:
    task = tiny_task_yaml(tmp_path)
    cmd = [sys.executable, "-m", "gpt2repro.evaluation.harness", "--model", "gpt2repro"]
    cmd += ["--model_args", f"checkpoint={export_dir}", "--tasks", str(task), "--device", "cpu"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = printed_metrics(proc.stdout, "tiny_lambada")
    assert printed == pytest.approx(reference_metrics(export_dir), rel=1e-4)
