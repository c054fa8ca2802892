"""export_hf / load_hf edge cases: layouts, bad inputs, hub failures, atomic writes.

Numeric parity with transformers lives in tests/parity/test_hf_parity.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gpt2repro import presets, pretrained
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.pretrained import export_hf, hf_tokenizer_spec, load_hf
from gpt2repro.tokenizer import load_tokenizer

SMALL = replace(presets.tiny_model(), vocab_size=100)  # fast; padded to 128 rows


def small_gpt(config: GPTConfig = SMALL) -> GPT:
    torch.manual_seed(0)
    return GPT(config).eval()


def assert_same_state(a: GPT, b: GPT) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def edit_json(path: Path, **changes: object) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.fixture
def isolated_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An empty hub cache, so a user's cached gpt2 cannot make the download succeed."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


@pytest.mark.usefixtures("isolated_hub")
@pytest.mark.parametrize("source", ["gpt2", "gpt2-xl", "openai-community/gpt2-medium"])
def test_hub_offline_fails_fast_naming_local_alternative(
    monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set") as info:
        load_hf(source)
    assert time.monotonic() - start < 10
    assert "hf download openai-community/" in str(info.value)
    assert "config.json model.safetensors --local-dir DIR" in str(info.value)
    assert "pass that local directory" in str(info.value)


@pytest.mark.usefixtures("isolated_hub")
def test_hub_unreachable_fails_fast_naming_local_alternative(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused
    start = time.monotonic()
    with pytest.raises(FileNotFoundError, match="Could not reach the Hugging Face Hub") as info:
        load_hf("gpt2")
    assert "pass that local directory" in str(info.value)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("source", ["gpt3", "does/not-exist"])
def test_unknown_id_or_missing_dir(source: str) -> None:
    with pytest.raises(FileNotFoundError, match="not one of the hub ids gpt2, gpt2-medium"):
        load_hf(source)


def test_missing_safetensors_names_found_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"missing model\.safetensors.*pytorch_model\.bin"):
        load_hf(tmp_path)


def test_non_gpt2_config_lists_every_problem(tmp_path: Path) -> None:
    out = export_hf(small_gpt(), tmp_path / "hf")
    edit_json(out / "config.json", model_type="llama", activation_function="relu", n_inner=7)
    with pytest.raises(ValueError, match=r"config\.json: not a GPT-2") as info:
        load_hf(out)
    for problem in ("model_type is 'llama'", "activation_function is 'relu'", "n_inner is 7"):
        assert problem in str(info.value)


def test_weights_not_matching_config(tmp_path: Path) -> None:
    out = export_hf(small_gpt(), tmp_path / "hf")
    edit_json(out / "config.json", n_positions=32)
    with pytest.raises(ValueError, match=r"transformer\.wpe\.weight is \(64, 64\)"):
        load_hf(out)


@pytest.mark.parametrize("keep", [0, 15, 100, 3000])
def test_corrupt_safetensors(tmp_path: Path, keep: int) -> None:
    out = export_hf(small_gpt(), tmp_path / "hf")
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])  # cut in the header, or in the data
    with pytest.raises(ValueError, match=r"model\.safetensors: corrupt or incomplete"):
        load_hf(out)


def test_untied_head_is_rejected(tmp_path: Path) -> None:
    out = export_hf(small_gpt(), tmp_path / "hf")
    tensors = load_file(out / "model.safetensors")
    tensors["lm_head.weight"] = torch.randn_like(tensors["transformer.wte.weight"])
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"lm_head\.weight differs"):
        load_hf(out)


def test_openai_hub_layout_without_prefix_and_with_mask_buffers(tmp_path: Path) -> None:
    model = small_gpt()
    out = export_hf(model, tmp_path / "hf")
    T = SMALL.block_size
    tensors = {
        k.removeprefix("transformer."): v for k, v in load_file(out / "model.safetensors").items()
    }
    for i in range(SMALL.n_layer):  # what old transformers saved alongside the weights
        tensors[f"h.{i}.attn.bias"] = torch.ones(T, T).tril().view(1, 1, T, T)
        tensors[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    assert_same_state(model, load_hf(out))


def test_bias_false_exports_zero_biases_and_comes_back(tmp_path: Path) -> None:
    model = small_gpt(replace(SMALL, bias=False))
    out = export_hf(model, tmp_path / "hf")
    biases = {k: v for k, v in load_file(out / "model.safetensors").items() if k.endswith("bias")}
    assert len(biases) == 6 * SMALL.n_layer + 1  # ln_1, c_attn, c_proj, ln_2, c_fc, c_proj; ln_f
    assert not any(v.any() for v in biases.values())
    assert not load_hf(out).config.bias
    # Biases trained elsewhere (say, fine-tuned in transformers) must not be dropped.
    biases["transformer.ln_f.bias"] += 1.0
    save_file(load_file(out / "model.safetensors") | biases, out / "model.safetensors")
    assert load_hf(out).config.bias


def test_export_writes_gpt2_config(tmp_path: Path) -> None:
    config = json.loads((export_hf(small_gpt(), tmp_path / "a") / "config.json").read_text())
    assert config["vocab_size"] == 100 and config["eos_token_id"] is None
    assert config["n_positions"] == config["n_ctx"] == SMALL.block_size
    assert config["model_type"] == "gpt2" and config["activation_function"] == "gelu_new"
    gpt2_vocab = small_gpt(replace(SMALL, vocab_size=50257))
    config = json.loads((export_hf(gpt2_vocab, tmp_path / "b") / "config.json").read_text())
    assert config["vocab_size"] == 50257 and config["eos_token_id"] == 50256


def test_export_refuses_non_empty_dir_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    out.mkdir()
    export_hf(small_gpt(), out)  # empty: fine
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_hf(small_gpt(), out)
    (out / "stale.txt").write_text("from an older export")
    export_hf(small_gpt(), out, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    with pytest.raises(FileExistsError, match="pass --overwrite to"):
        pretrained.check_export_dir(out, overwrite=False, flag="--overwrite")


def test_export_into_a_file_says_so(tmp_path: Path) -> None:
    a_file = tmp_path / "config.json"
    a_file.write_text("{}")
    for target in (a_file, a_file / "sub" / "dir"):
        with pytest.raises(NotADirectoryError, match=f"{a_file} is a file"):
            export_hf(small_gpt(), target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_export_replaces_only_an_earlier_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, checkpoint, data = tmp_path / "run", tmp_path / "step_000010", tmp_path / "data"
    (run / "checkpoints").mkdir(parents=True)
    checkpoint.mkdir()
    (checkpoint / "train_state.pt").touch()
    (data / "shakespeare").mkdir(parents=True)
    for target in (run, checkpoint, data):
        with pytest.raises(FileExistsError, match="is not an earlier export"):
            export_hf(small_gpt(), target, overwrite=True)
    assert (run / "checkpoints").is_dir() and (checkpoint / "train_state.pt").is_file()
    assert (data / "shakespeare").is_dir()
    # The current directory and those above it are never a target, even when empty.
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for target in (Path("."), Path(".."), work.parent.parent):
        with pytest.raises(ValueError, match="current directory or one above it"):
            export_hf(small_gpt(), target, overwrite=True)
    assert work.is_dir() and (run / "checkpoints").is_dir()


def test_failed_export_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrained, "save_file", killed)
    with pytest.raises(KeyboardInterrupt):
        export_hf(small_gpt(), tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


def test_load_casts_to_requested_dtype(tmp_path: Path) -> None:
    model = small_gpt().to(torch.bfloat16)
    out = export_hf(model, tmp_path / "hf")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert load_hf(out).transformer.wte.weight.dtype == torch.float32
    assert_same_state(model, load_hf(out, dtype=torch.bfloat16))


def test_tokenizer_spec_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    from gpt2repro.data.train_bpe import train_bpe

    (tmp_path / "tok").mkdir()
    (tmp_path / "corpus.txt").write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    train_bpe([tmp_path / "corpus.txt"], 300, tmp_path / "tok/bpe.json", show_progress=False)
    # A trained tokenizer is copied into the export, so the directory is self-contained.
    out = export_hf(small_gpt(), tmp_path / "a", "tok/bpe.json")
    assert json.loads((out / "gpt2repro.json").read_text())["tokenizer"] == "tokenizer.json"
    assert hf_tokenizer_spec(out) == str(out / "tokenizer.json")
    assert (out / "tokenizer.json").read_bytes() == (tmp_path / "tok/bpe.json").read_bytes()
    # A broken tokenizer file is refused before anything is written.
    (tmp_path / "tok/broken.json").write_text('{"model": "stand-in"}')
    with pytest.raises(ValueError, match=r"broken\.json: unreadable"):
        export_hf(small_gpt(), tmp_path / "e", "tok/broken.json")
    assert not (tmp_path / "e").exists()
    assert hf_tokenizer_spec(export_hf(small_gpt(), tmp_path / "b")) is None
    gpt2_vocab = small_gpt(replace(SMALL, vocab_size=50257))
    assert hf_tokenizer_spec(export_hf(gpt2_vocab, tmp_path / "c")) == "gpt2"
    assert hf_tokenizer_spec(export_hf(gpt2_vocab, tmp_path / "d", "gpt2")) == "gpt2"
    assert hf_tokenizer_spec("gpt2-large") == "gpt2"  # no download needed


def test_export_carries_gpt2s_tokenizer_for_transformers(tmp_path: Path) -> None:
    """transformers' own GPT-2 tokenizers, slow and fast, read from the export, encode and
    decode as tiktoken-backed GPT2Tokenizer does: the merges rebuilt from the ranks are GPT-2's."""
    from transformers import AutoTokenizer
    from transformers import GPT2Tokenizer as HFGPT2Tokenizer

    from gpt2repro.tokenizer import GPT2Tokenizer

    out = export_hf(small_gpt(replace(SMALL, vocab_size=50257)), tmp_path / "hf", "gpt2")
    ours = GPT2Tokenizer()
    fast, slow = AutoTokenizer.from_pretrained(out), HFGPT2Tokenizer.from_pretrained(out)
    assert fast.is_fast and fast.eos_token_id == slow.eos_token_id == ours.eot_id
    assert fast.model_max_length == SMALL.block_size
    texts = [
        "Hello world",
        "The quick brown fox jumps over the lazy dog.  Twice!\n\n\tTabs, 'quotes' and 1234567.",
        "日本語のテキスト, émigrés, naïve café; emoji 🦀👩‍👩‍👧",
        "  leading spaces and trailing  ",
        "def f(x):\n    return x ** 2  # comment",
    ]
    for text in texts:
        ids = ours.encode(text)
        assert fast(text)["input_ids"] == slow(text)["input_ids"] == ids, text
        assert fast.decode(ids) == text
    assert fast("a<|endoftext|>b")["input_ids"] == ours.encode(
        "a<|endoftext|>b", allow_special=True
    )


def test_export_of_a_trained_bpe_names_its_end_of_text(tmp_path: Path) -> None:
    from gpt2repro.data.train_bpe import train_bpe

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    tok_file = tmp_path / "tok.json"
    eot = train_bpe([corpus], 300, tok_file, show_progress=False).eot_id
    out = export_hf(small_gpt(replace(SMALL, vocab_size=300)), tmp_path / "hf", str(tok_file))
    config = json.loads((out / "config.json").read_text())
    assert config["eos_token_id"] == config["bos_token_id"] == eot
    assert (out / "tokenizer.json").read_bytes() == tok_file.read_bytes()
    # transformers reads the context and the end-of-text token from the export itself.
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(out)
    assert hf.model_max_length == SMALL.block_size and hf.eos_token_id == eot
    long = "the cat sat on the mat. " * 100
    ours = load_tokenizer(str(tok_file)).encode(long)
    assert hf(long)["input_ids"] == ours and len(ours) > SMALL.block_size
    assert hf(long, truncation=True)["input_ids"] == ours[: SMALL.block_size]
