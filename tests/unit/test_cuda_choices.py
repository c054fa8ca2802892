"""Decisions taken for CUDA devices, checked on the CPU with torch.cuda's answers faked:
the datasheet peak per GPU model, bf16 only where native, an explicit GPU index made current."""

from __future__ import annotations

import pytest
import torch

from gpt2repro.metrics import datasheet_peak
from gpt2repro.parallelize import resolve_dtype
from gpt2repro.runtime import resolve_device
from gpt2repro.training import setup as session

CUDA = torch.device("cuda")


@pytest.mark.parametrize(
    ("name", "bf16"),
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H100 NVL", 835e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA H200 NVL", 835e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA GeForce GTX 1080", None),
    ],
)
def test_datasheet_peak_by_gpu_model(
    monkeypatch: pytest.MonkeyPatch, name: str, bf16: float | None
) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert datasheet_peak(CUDA, "bf16") == bf16
    assert datasheet_peak(torch.device("cpu"), "bf16") is None
    # Training's MFU divides by the datasheet where there is one, else by a measurement,
    # and its log says which.
    monkeypatch.setattr(session, "measure_matmul_peak", lambda *args, **kwargs: 1e12)
    peak, source = session.peak_flops_for(CUDA, "bf16")
    if bf16 is None:
        assert peak == 1e12 and "measured" in source
    else:
        assert peak == bf16 and "datasheet" in source
    assert session.peak_flops_for(torch.device("cpu"), "bf16")[0] == 1e12


def test_auto_dtype_takes_fp16_where_bf16_is_only_emulated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A V100 or T4: torch.cuda.is_bf16_supported() says True, counting emulation.
    monkeypatch.setattr(
        torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation
    )
    assert resolve_dtype("auto", CUDA) == "fp16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_dtype("auto", CUDA) == "bf16"


def test_an_explicit_gpu_index_becomes_the_current_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]
    assert resolve_device("cuda") == CUDA and len(current) == 1  # no index: left as it is
    with pytest.raises(ValueError, match="has 2 GPU"):
        resolve_device("cuda:2")
