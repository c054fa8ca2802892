"""Hugging Face's GPT-2 format in and out: a directory holding config.json + model.safetensors.

`export_hf` writes what `transformers.GPT2LMHeadModel.from_pretrained(dir)` loads; `load_hf`
reads such a directory, or fetches OpenAI's weights from the Hub (`gpt2` ... `gpt2-xl`).
Our parameter names are HF's, so the conversion is: transpose the four Conv1D matrices of
each block (HF's Conv1D stores [in, out], nn.Linear [out, in]), drop or zero-fill the padded
embedding rows, and leave out `lm_head.weight`, which is tied to `wte`. Only safetensors are
read, so loading never unpickles anything.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt2repro.atomic import atomic_directory
from gpt2repro.hub_models import HUB_REPOS, download, hub_repo
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.nanochat import (
    NANOCHAT_CLASS,
    from_nanochat,
    gpt_config_from_nanochat,
    nanochat_config,
    stock_class,
    to_nanochat,
)
from gpt2repro.tokenizer import EOT, gpt2_vocab_and_merges, load_tokenizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SIDECAR_FILE = "gpt2repro.json"
"""What transformers ignores but we want back: the tokenizer spec and the bias flag."""
SIDECAR_VERSION = 1
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256  # <|endoftext|>, GPT-2's only special token

_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_WTE = "transformer.wte.weight"
_EMBEDDINGS = (_WTE, "transformer.wpe.weight")
# Causal-mask buffers that older transformers saved with the weights (OpenAI's hub files have them).
_MASK_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.(masked_)?bias")
# Activations that compute GPT-2's tanh-approximated GELU.
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


def export_hf(
    model: GPT,
    out_dir: Path | str,
    tokenizer_spec: str | None = None,
    *,
    overwrite: bool = False,
    source: str | None = None,
) -> Path:
    """Write `model` as a transformers directory and return its path: GPT2LMHeadModel for the
    classic architecture, NanoChatForCausalLM for the modern options (nanochat.py); a model
    that neither class computes exactly is refused, naming the options in the way.

    HF's GPT-2 has no bias flag, so a `bias=False` model is written with zero biases: the
    same function, loadable by transformers, and `load_hf` turns it back into `bias=False`.
    The directory appears complete or not at all: files go to a hidden sibling that is
    renamed into place, so a killed export never leaves a directory that looks valid.
    `source` (what was exported, e.g. a checkpoint's resolved path) is recorded beside it.
    """
    out_dir = Path(out_dir)
    config = model.config
    cls = stock_class(config)  # before anything is written
    check_export_dir(out_dir, overwrite)
    eot = GPT2_EOT_ID if config.vocab_size == GPT2_VOCAB_SIZE else None
    tokenizer_file = None
    if tokenizer_spec is not None and tokenizer_spec.endswith(".json"):
        # A trained BPE travels inside the directory (it is HF's tokenizer.json format).
        tokenizer_file, tokenizer_spec = Path(tokenizer_spec), "tokenizer.json"
        eot = load_tokenizer(str(tokenizer_file)).eot_id
    if cls == NANOCHAT_CLASS:
        tensors = to_nanochat(model)
        hf_config = nanochat_config(config, tensors["model.embed_tokens.weight"].dtype, eot)
    else:
        tensors = _gpt2_tensors(model)
        hf_config = _hf_config(config, tensors[_WTE].dtype, eot)
    sidecar = dict(version=SIDECAR_VERSION, tokenizer=tokenizer_spec, bias=config.bias)
    if source is not None:
        sidecar["source"] = source

    with atomic_directory(out_dir) as tmp:
        # transformers refuses safetensors files without format metadata.
        save_file(tensors, tmp / WEIGHTS_FILE, metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n")
        (tmp / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2) + "\n")
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
            _write_tokenizer_config(tmp, "PreTrainedTokenizerFast", config.block_size)
        elif tokenizer_spec == "gpt2":
            _write_gpt2_tokenizer(tmp, config.block_size)
    return out_dir


def _gpt2_tensors(model: GPT) -> dict[str, torch.Tensor]:
    """`model`'s weights as GPT2LMHeadModel's: Conv1D matrices transposed, no padded rows,
    the tied head left out, zero biases for a bias=False model."""
    config = model.config
    tensors: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if name == "lm_head.weight":
            continue  # tied to wte; transformers re-ties it (tie_word_embeddings)
        t = t.detach().cpu()
        if name == _WTE:
            t = t[: config.vocab_size]  # (vocab_size, C): padded rows are ours alone
        elif name.endswith(_CONV1D):
            t = t.t()  # (out, in) -> (in, out)
        tensors[name] = t.contiguous()
    if not config.bias:
        for name, t in list(tensors.items()):
            if name.endswith(".weight") and name not in _EMBEDDINGS:
                # A Conv1D weight is (in, out) and a LayerNorm weight (C,): the bias has the last dim.
                tensors[name.removesuffix("weight") + "bias"] = t.new_zeros(t.shape[-1])
    return tensors


def _write_gpt2_tokenizer(out_dir: Path, max_length: int) -> None:
    """GPT-2's BPE as transformers' GPT2Tokenizer reads it, so `AutoTokenizer.from_pretrained`
    on the export works offline (without it, it would need the hub's `gpt2` files)."""
    vocab, merges = gpt2_vocab_and_merges()
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (out_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    _write_tokenizer_config(out_dir, "GPT2Tokenizer", max_length, unk_token=EOT)


def _write_tokenizer_config(out_dir: Path, cls: str, max_length: int, **extra: str) -> None:
    """transformers' tokenizer settings: the context as model_max_length (else truncation
    would not stop at it), <|endoftext|> as bos and eos, no prefix space (as in training)."""
    settings = {
        "tokenizer_class": cls,
        "model_max_length": max_length,
        "bos_token": EOT,
        "eos_token": EOT,
        **extra,
        "add_prefix_space": False,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")


def check_export_dir(out_dir: Path, overwrite: bool, flag: str = "overwrite=True") -> None:
    """Raise unless `export_hf` may write `out_dir`; `flag` is how the caller spells overwrite."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(
            f"{out_dir} is a file, but the export is a directory. Pass a directory path to create."
        )
    blocker = next((p for p in out_dir.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise NotADirectoryError(
            f"{out_dir}: {blocker} is a file, so no directory can be created there. "
            "Pass a directory path to create."
        )
    resolved, here = out_dir.resolve(), Path.cwd().resolve()
    if resolved == here or resolved in here.parents:
        raise ValueError(
            f"{out_dir} is the current directory or one above it; an export replaces its whole "
            "directory. Pass a new directory, e.g. exports/my-model."
        )
    if not out_dir.is_dir() or not any(out_dir.iterdir()):
        return
    if not (out_dir / SIDECAR_FILE).is_file():
        # --overwrite replaces an earlier export only: never a run, a dataset or a user's folder.
        raise FileExistsError(
            f"{out_dir} exists and is not an earlier export (no {SIDECAR_FILE}); an export "
            "never replaces it. Choose a new directory."
        )
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} holds an earlier export. Choose a new directory, or pass {flag} to "
            "replace it."
        )


def read_weights(file: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of safetensors `file`; a truncated or corrupt file raises a ValueError naming it."""
    try:
        return load_file(file, device=str(device))
    except SafetensorError as e:
        raise ValueError(corrupt_message(file, e, "Re-export or re-download it")) from e


def corrupt_message(file: Path, error: object, advice: str) -> str:
    """What to say of a weights or state `file` that could not be read (truncated, corrupt)."""
    return (
        f"{file}: corrupt or incomplete ({error}); it was probably cut short by a full disk or "
        f"an interrupted copy. {advice}."
    )


def _hf_config(config: GPTConfig, dtype: torch.dtype, eot: int | None) -> dict[str, Any]:
    """transformers' GPT2Config as JSON, describing exactly our architecture; `eot` is the
    tokenizer's <|endoftext|> id (None when the tokenizer is unknown)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,  # the true vocabulary, without padding
        "n_positions": config.block_size,
        "n_ctx": config.block_size,  # read by transformers < 4
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None,  # 4 * n_embd
        "activation_function": "gelu_new",  # GELU, tanh approximation
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def load_hf(source: str | Path, pad_vocab_to: int = 64, dtype: torch.dtype = torch.float32) -> GPT:
    """GPT-2 from a local HF-format directory or a hub id (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`).

    Returns the model on CPU in eval mode, as `from_pretrained` does; `model.config` is its
    GPTConfig. The embedding gains zero rows up to a multiple of `pad_vocab_to`. Biases
    stay, even all-zero ones, unless the directory is our own export of a `bias=False` model
    whose biases are still zero.
    """
    path = _resolve(source)
    hf = _read_json(path / CONFIG_FILE)
    sidecar = read_sidecar(path)
    state: dict[str, torch.Tensor] = {}
    tensors = read_weights(path / WEIGHTS_FILE)
    if hf.get("model_type") == "nanochat":
        return _load_nanochat(hf, tensors, path, pad_vocab_to, dtype)
    for key, t in tensors.items():
        # OpenAI's hub files name keys without the `transformer.` prefix (`h.0.attn...`).
        name = key if key.startswith(("transformer.", "lm_head.")) else f"transformer.{key}"
        if not _MASK_BUFFER.fullmatch(name):
            state[name] = t
    biases = [t for name, t in state.items() if name.endswith(".bias")]
    bias = sidecar.get("bias", True) or any(t.any() for t in biases)
    config = _gpt_config(hf, path / CONFIG_FILE, pad_vocab_to, bias)
    with torch.device("meta"):  # shapes only; the weights come from the file
        model = GPT(config)
    ours = _to_ours(state, model, dtype, path)
    model.load_state_dict(ours | {"lm_head.weight": ours[_WTE]}, assign=True)
    model.lm_head.weight = model.get_parameter(_WTE)  # assign=True made two Parameters
    return model.eval()


def _load_nanochat(
    hf: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    path: Path,
    pad_vocab_to: int,
    dtype: torch.dtype,
) -> GPT:
    """A NanoChatForCausalLM directory as our GPT with the modern options (nanochat.py)."""
    try:
        config = gpt_config_from_nanochat(hf, pad_vocab_to)
    except ValueError as e:
        raise ValueError(f"{path / CONFIG_FILE}: {e}") from None
    with torch.device("meta"):
        model = GPT(config)
    try:
        ours = from_nanochat({k: t.to(dtype) for k, t in tensors.items()}, config)
        model.load_state_dict(ours, assign=True)
    except (KeyError, RuntimeError) as e:
        raise ValueError(
            f"{path / WEIGHTS_FILE} does not match {path / CONFIG_FILE} ({e}). Re-export it."
        ) from None
    if config.tie_embeddings:
        model.lm_head.weight = model.transformer.wte.weight  # assign=True made two Parameters
    return model.eval()


def _to_ours(
    state: dict[str, torch.Tensor], model: GPT, dtype: torch.dtype, path: Path
) -> dict[str, torch.Tensor]:
    """HF tensors (prefixed names) as `model`'s state dict, minus lm_head; all problems at once."""
    config = model.config
    head, wte = state.pop("lm_head.weight", None), state.get(_WTE)
    if head is not None and wte is not None and not torch.equal(head, wte):
        raise ValueError(
            f"{path / WEIGHTS_FILE}: lm_head.weight differs from transformer.wte.weight, but "
            "GPT-2 ties them. Only tied checkpoints can be loaded."
        )
    expected = {k: v.shape for k, v in model.state_dict().items() if k != "lm_head.weight"}
    ours: dict[str, torch.Tensor] = {}
    problems = []
    for name, t in state.items():
        if name.endswith(".bias") and not config.bias:
            continue  # zero biases that export_hf wrote for a bias=False model
        if name not in expected:
            problems.append(f"unexpected tensor {name}")
            continue
        t = t.to(dtype)
        if name.endswith(_CONV1D):
            t = t.t()  # (in, out) -> (out, in)
        elif name == _WTE and t.size(0) == config.vocab_size:
            padded = t.new_zeros(config.padded_vocab_size, t.size(1))  # (padded_vocab, C)
            padded[: config.vocab_size] = t  # padded rows stay zero, as after init_weights
            t = padded
        if t.shape != expected[name]:
            problems.append(f"{name} is {tuple(t.shape)}, config implies {tuple(expected[name])}")
        ours[name] = t.contiguous()
    problems += [f"missing tensor {name}" for name in sorted(expected.keys() - ours.keys())]
    if problems:
        raise ValueError(
            f"{path / WEIGHTS_FILE} does not match {path / CONFIG_FILE}: "
            + "; ".join(problems)
            + ". Re-export it; a GPT-2 saved by transformers or export_hf matches its config."
        )
    return ours


def hf_tokenizer_spec(source: str | Path) -> str | None:
    """The tokenizer spec for a `load_hf` source: what export_hf recorded (a relative path is
    relative to the directory), else "gpt2" for GPT-2's 50,257-token vocabulary, else None."""
    if hub_repo(source) is not None:
        return "gpt2"
    path = _resolve(source)
    spec = read_sidecar(path).get("tokenizer")
    if spec is not None:
        return str(spec) if spec == "gpt2" else str(path / spec)
    return "gpt2" if _read_json(path / CONFIG_FILE).get("vocab_size") == GPT2_VOCAB_SIZE else None


def _gpt_config(hf: dict[str, Any], file: Path, pad_vocab_to: int, bias: bool) -> GPTConfig:
    """Our config for a transformers GPT2Config; missing keys take GPT2Config's defaults."""
    n_embd = hf.get("n_embd", 768)
    problems = []
    for key, default, allowed in [  # what our GPT computes, and transformers' defaults
        ("model_type", None, ("gpt2",)),
        ("activation_function", "gelu_new", _GELU_TANH),
        ("n_inner", None, (None, 4 * n_embd)),
        ("layer_norm_epsilon", 1e-5, (1e-5,)),
        ("scale_attn_weights", True, (True,)),
        ("scale_attn_by_inverse_layer_idx", False, (False,)),
        ("add_cross_attention", False, (False,)),
        ("tie_word_embeddings", True, (True,)),
    ]:
        if hf.get(key, default) not in allowed:
            problems.append(f"{key} is {hf.get(key)!r}, not {' or '.join(map(repr, allowed))}")
    if problems:
        raise ValueError(
            f"{file}: not a GPT-2 that gpt2repro can represent: "
            + "; ".join(problems)
            + ". Only the original GPT-2 architecture (GPT2LMHeadModel) loads."
        )
    return GPTConfig(
        vocab_size=hf.get("vocab_size", GPT2_VOCAB_SIZE),
        block_size=hf.get("n_positions", hf.get("n_ctx", 1024)),
        n_layer=hf.get("n_layer", 12),
        n_head=hf.get("n_head", 12),
        n_embd=n_embd,
        dropout=hf.get("resid_pdrop", 0.1),  # our single rate; GPT-2 uses 0.1 for all three
        bias=bias,
        pad_vocab_to=pad_vocab_to,
    )


def _resolve(source: str | Path) -> Path:
    """A local directory holding config.json and model.safetensors, downloading hub ids."""
    repo = hub_repo(source)
    path = download(repo) if repo is not None else Path(source).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"{source}: no such directory, and not one of the hub ids {', '.join(HUB_REPOS)}. "
            f"Pass a directory holding {CONFIG_FILE} and {WEIGHTS_FILE} (written by export_hf or "
            "transformers' save_pretrained), or a hub id."
        )
    missing = [f for f in (CONFIG_FILE, WEIGHTS_FILE) if not (path / f).is_file()]
    if missing:
        found = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(
            f"{path}: missing {' and '.join(missing)} (found: {', '.join(found) or 'nothing'}). "
            "gpt2repro reads one unsharded model.safetensors and never unpickles "
            "pytorch_model.bin; convert with transformers: "
            f"`GPT2LMHeadModel.from_pretrained('{path}').save_pretrained(DIR, max_shard_size='100GB')`."
        )
    return path


def read_sidecar(export_dir: Path) -> dict[str, Any]:
    """Our notes beside an export (tokenizer, bias, source); {} for a folder we did not write."""
    file = export_dir / SIDECAR_FILE
    return _read_json(file) if file.is_file() else {}


def _read_json(file: Path) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: not valid JSON ({e}). Re-export or re-download it.") from e
    return data if isinstance(data, dict) else {}
