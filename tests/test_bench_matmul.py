"""The int8 matmul suite: one row per forced CPU vector path, and the caller's FASTLM_INT8_KERNEL left as it was."""
from __future__ import annotations

import os

import pytest
import torch

from fastlm.bench.registry import Options
from fastlm.bench.suites import matmul

pytest.importorskip("fastlm._C")


@pytest.fixture
def tiny(monkeypatch):
    monkeypatch.setattr(matmul, "CPU_SIZES", [64])
    monkeypatch.setattr(matmul, "CPU_ROWS", [1, 3])


def test_cpu_rows_force_every_vector_path(tiny, monkeypatch):
    monkeypatch.delenv("FASTLM_INT8_KERNEL", raising=False)
    rows = matmul.measure(Options(device="cpu", quick=True, repeat=1))
    paths = [p for p in torch.ops.fastlm.int8_cpu_kernels() if p != "scalar"]
    expected = {(s, p, m) for s in ("w8a8", "w8a16") for p in paths for m in (1, 3)}
    expected |= {("w8a8", f"{p}_packed", m) for p in paths if p in ("avx512_vnni", "avx_vnni") for m in (1, 3)}
    assert {(r["scheme"], r["kernel"], r["M"]) for r in rows} == expected
    assert all(r["fastlm_ms"] > 0 and r["vs_torch_int8"] > 0 for r in rows)
    assert "FASTLM_INT8_KERNEL" not in os.environ


def test_cpu_rows_keep_a_forced_path(tiny, monkeypatch):
    monkeypatch.setenv("FASTLM_INT8_KERNEL", "scalar")
    rows = matmul.measure(Options(device="cpu", quick=True, repeat=1))
    assert {r["kernel"] for r in rows} == {"scalar"}
    assert os.environ["FASTLM_INT8_KERNEL"] == "scalar"
