"""`bench loader` and `bench eval` on tiny sizes: structure and correctness facts, never speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt2repro.bench.eval import bench_eval, one_at_a_time, synthetic_examples
from gpt2repro.bench.loader import (
    RawWindows,
    bench_loader,
    parse_shape,
    write_synthetic_dataset,
)
from gpt2repro.data.loader import TokenLoader
from gpt2repro.data.manifest import read_manifest
from gpt2repro.data.verify import verify_dataset
from gpt2repro.distributed import DistInfo
from gpt2repro.evaluation.hellaswag import (
    ENDINGS,
    METRICS,
    _batch,
    ending_scores,
    hellaswag_eval,
    load_examples,
    predict,
    render,
)
from gpt2repro.model import GPT, GPTConfig
from gpt2repro.tokenizer import GPT2Tokenizer


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30k tokens in 8k-token shards, so windows lie in several shards."""
    root = tmp_path_factory.mktemp("loader") / "synthetic"
    return write_synthetic_dataset(root, tokens=30_000, shard_tokens=8_000, seed=1)


def test_synthetic_dataset_is_a_valid_prepared_dataset(synthetic: Path) -> None:
    summary = verify_dataset(synthetic)
    assert summary["ok"]
    splits = read_manifest(synthetic)["splits"]
    assert splits["train"]["tokens"] + splits["val"]["tokens"] == 30_000
    assert len(splits["train"]["shards"]) >= 3 and splits["val"]["documents"] == 1


@pytest.mark.parametrize("shape", [(4, 16), (8, 100)])
def test_raw_windows_are_the_loaders_batches(synthetic: Path, shape: tuple[int, int]) -> None:
    """Across shard boundaries and several epochs, raw reading returns the loader's tokens."""
    B, T = shape
    raw = RawWindows(synthetic, "train", B, T, seed=3)
    count = 2 * raw.per_epoch + 3  # into the third epoch
    shard, offset = raw.plan(0, count)
    assert shard.shape == offset.shape == (count, B)
    assert len(set(shard.ravel().tolist())) > 1
    with TokenLoader(synthetic, "train", B, T, seed=3, prefetch=2) as loader:
        for k in range(count):
            x, y = loader.next_batch()
            rx, ry = raw.read(shard[k], offset[k])
            assert torch.equal(x, rx) and torch.equal(y, ry), k


def test_bench_loader_reports_every_shape_and_prefetch_setting(synthetic: Path) -> None:
    result = bench_loader(
        synthetic, shapes=[(4, 16), (2, 64)], prefetch=(0, 1), tokens=2_000, rounds=2
    )
    json.dumps(result)  # JSON-able
    assert result["bench"] == "loader" and result["data_dir"] == str(synthetic)
    assert [(r["batch_size"], r["seq_len"]) for r in result["rows"]] == [(4, 16), (2, 64)]
    for row in result["rows"]:
        assert row["same_tokens"] is True
        for key in (
            "raw_tokens_per_s",
            "loader_prefetch0_tokens_per_s",
            "loader_prefetch1_tokens_per_s",
            "ratio_prefetch0_vs_raw",
            "ratio_prefetch1_vs_raw",
        ):
            assert row[key] > 0, key
        assert all(len(v) == 2 for v in row["seconds"].values())
    assert "threads" in result["hardware"]


def test_bench_loader_writes_its_own_dataset_when_given_none(tmp_path: Path) -> None:
    result = bench_loader(
        shapes=[(2, 8)], prefetch=(2,), tokens=200, rounds=1, synthetic_tokens=5_000,
        work_dir=tmp_path,
    )  # fmt: skip
    assert result["data_dir"] == "synthetic" and result["rows"][0]["same_tokens"] is True
    assert list(tmp_path.iterdir()) == []  # the temporary dataset is gone


def test_bench_loader_rejects_bad_arguments(synthetic: Path) -> None:
    assert parse_shape("16x1024") == (16, 1024)
    for bad in ("16", "0x8", "ax8", "16x-1"):
        with pytest.raises(ValueError, match="BATCHxSEQ_LEN"):
            parse_shape(bad)
    with pytest.raises(ValueError, match=r"prefetch=.*rounds=0"):
        bench_loader(synthetic, prefetch=(-1,), rounds=0)
    with pytest.raises(ValueError, match="fewer windows than one batch"):
        bench_loader(synthetic, shapes=[(1000, 1000)])


def test_synthetic_examples_have_the_real_schema(tmp_path: Path) -> None:
    examples = synthetic_examples(6, seed=2)
    path = tmp_path / "hellaswag_val.jsonl"
    path.write_text("".join(json.dumps(ex) + "\n" for ex in examples), encoding="utf-8")
    loaded = load_examples(path)  # validates ctx, 4 endings and a label 0-3
    assert loaded == examples
    keys = {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "split", "split_type"}
    assert all(keys | {"label", "endings", "source_id"} == set(ex) for ex in examples)
    assert synthetic_examples(6, seed=2) == examples != synthetic_examples(6, seed=3)


def test_one_at_a_time_predicts_what_the_batched_scorer_predicts() -> None:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, block_size=64, n_layer=2, n_head=2, n_embd=32))
    model.eval()
    tok, cpu = GPT2Tokenizer(), torch.device("cpu")
    examples = synthetic_examples(5, seed=0)
    preds, labels = one_at_a_time(model, examples, tok, cpu, "fp32", 64)
    assert labels.tolist() == [ex["label"] for ex in examples]

    # Batched as hellaswag_eval does: all examples padded to the longest row of the set.
    rendered = [render(ex, tok, 64) for ex in examples]
    length = max(len(r) for ex in rendered for r in ex.rows)
    tokens, mask, nbytes, _ = _batch(rendered, length, tok.eot_id, cpu)
    with torch.no_grad():
        logprob, ntok = ending_scores(model, tokens, mask, "fp32")
    want = predict(logprob.view(-1, ENDINGS), ntok.view(-1, ENDINGS), nbytes)
    for name in METRICS:
        assert torch.equal(preds[name], want[name]), name

    got = hellaswag_eval(model, examples, tok, cpu, "fp32", DistInfo(), 3, False)
    for name in METRICS:
        assert got[name] == pytest.approx((preds[name] == labels).double().mean().item())


def test_bench_eval_reports_rates_and_agreement(tmp_path: Path) -> None:
    result = bench_eval(
        "init:tiny", examples=3, batch_size=2, rounds=1, device_name="cpu", dtype="fp32",
        work_dir=tmp_path,
    )  # fmt: skip
    json.dumps(result)
    assert result["bench"] == "eval" and result["examples"] == 3 and result["dtype"] == "fp32"
    for key in ("batched_examples_per_s", "one_at_a_time_examples_per_s", "speedup"):
        assert result[key] > 0, key
    assert result["same_metrics"] is True
    # 2 batches of 2 examples (one dummy) at one shared length, vs each at its own length.
    assert result["tokens_batched"] >= result["tokens_one_at_a_time"] > 0
    assert result["tokens_batched"] % (2 * 2 * ENDINGS) == 0
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="examples=0"):
        bench_eval("init:tiny", examples=0)


def test_bench_shakespeare_gives_the_baseline_our_training_time_at_most(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step-time probe only sizes the schedule; the time limit holds the budget."""
    import gpt2repro.bench.shakespeare as train_module
    from gpt2repro.bench.shakespeare import BASELINE_TIME_SLACK, bench_shakespeare
    from gpt2repro.training.loop import RunResult, TrainState

    seen = []

    def fake_train(cfg):  # type: ignore[no-untyped-def]
        seen.append(cfg)
        seconds = {"shakespeare_cpu": 300.0}.get(cfg.run.out_dir.name, 0.03 * cfg.run.max_steps)
        state = TrainState(step=cfg.run.max_steps, train_seconds=seconds)
        return RunResult(cfg.run.out_dir, state, {"loss": 1.0, "bpb": 2.0}, "finished", None)

    monkeypatch.setattr(train_module, "train", fake_train)
    result = bench_shakespeare(tmp_path, calibration_steps=10)
    _, probe, base = seen
    assert probe.run.max_steps == 10
    assert base.run.max_steps == 10_000  # 300 s at the probe's 0.03 s a step
    assert base.run.max_minutes == pytest.approx(BASELINE_TIME_SLACK * 300 / 60)
    assert result["train_seconds_ratio"] == pytest.approx(1.0)
