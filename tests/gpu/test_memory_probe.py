"""memory.step_probe on a real GPU: `pytest -m gpu tests/gpu/test_memory_probe.py`.

On CUDA the probe runs real steps and reads the allocator's peak. Checked here: the fake-tensor
count of the same step (what the probe reports off CUDA) agrees with it; a micro-batch that
runs out of memory is reported as not fitting and leaves the probe as it was; FSDP's sharding
over the fake process group runs on real CUDA tensors; the dry run measures on the GPU.
"""

from __future__ import annotations

import pytest
import torch

from gpt2repro.config import BatchConfig, TrainConfig
from gpt2repro.model import GPTConfig
from gpt2repro.presets import train_preset
from gpt2repro.training import plan
from gpt2repro.training.memory import needed_bytes, step_probe, suggest_micro_batch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")
T = 256


def config(micro_batch: int = 8, accum: int = 4, parallel: str = "ddp") -> TrainConfig:
    model = GPTConfig(n_layer=4, n_head=4, n_embd=256, block_size=T, vocab_size=50257)
    cfg = TrainConfig(model=model, batch=BatchConfig(micro_batch * T * accum, micro_batch, T))
    cfg.run.parallel = parallel
    return cfg


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("accum", [1, 4])
def test_allocator_peak_agrees_with_the_fake_tensor_count(dtype: str, accum: int) -> None:
    cfg = config(accum=accum)
    with step_probe(cfg, dtype, CUDA) as probe:
        real = probe(8)
    with step_probe(cfg, dtype, CUDA, fake=True) as probe:
        fake = probe(8)
    assert real is not None and fake is not None
    assert "max_memory_allocated" in real.method and "fake tensors" in fake.method
    # The allocator rounds each block up to 512 B and holds cuBLAS's workspace besides.
    assert fake.peak == pytest.approx(real.peak, rel=0.05), (fake.peak, real.peak)
    assert real.peak > real.floor


def test_out_of_memory_does_not_fit_and_leaves_the_probe_usable() -> None:
    start = torch.cuda.memory_allocated()
    cfg = config(accum=1 << 16)
    with step_probe(cfg, "bf16", CUDA) as probe:
        before = probe(8)
        assert probe(1 << 16) is None  # 16.8M tokens: far past any GPU's memory
        after = probe(16)
    with step_probe(cfg, "bf16", CUDA) as probe:
        fresh = probe(16)
    assert before is not None and after is not None and fresh is not None
    assert after.peak == pytest.approx(fresh.peak, rel=0.01)
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - start < 64 * 2**20  # the probe gave it back


def test_suggestion_measures_this_gpu() -> None:
    cfg = config(accum=16)
    budget = 2 * 10**9
    with step_probe(cfg, "bf16", CUDA) as probe:
        s = suggest_micro_batch(cfg, probe, "cuda", budget)
        assert s.micro_batch is not None and s.estimate is not None, s.message
        assert needed_bytes(s.estimate, "cuda") <= s.budget
        larger = [mb for mb in (16, 32, 64, 128) if mb > s.micro_batch]
        if larger:
            bigger = probe(larger[0])
            assert bigger is None or needed_bytes(bigger, "cuda") > s.budget


def test_fsdp_shards_real_cuda_tensors_over_the_fake_group() -> None:
    with step_probe(config(), "bf16", CUDA) as probe:
        whole = probe(8)
    with step_probe(config(parallel="fsdp"), "bf16", CUDA, world_size=4) as probe:
        sharded = probe(8)
    assert whole is not None and sharded is not None
    assert sharded.floor == whole.floor // 4 and sharded.peak < whole.peak


def test_dry_run_measures_on_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "1")
    cfg = train_preset("gpt2_124m_fineweb_edu")
    cfg.run.device = "cuda"
    report = plan.dry_run_report(cfg)
    assert "measured: one eager training step on cuda, max_memory_allocated" in report
    assert "largest micro-batch: " in report and "--batch.micro-batch" in report
