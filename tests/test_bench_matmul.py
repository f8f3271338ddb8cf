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
    expected |= {("w8a16", "avx512_vnni_packed", m) for m in (1, 3) if "avx512_vnni" in paths}
    assert {(r["scheme"], r["kernel"], r["M"]) for r in rows} == expected
    assert all(r["fastlm_ms"] > 0 and r["vs_torch_int8"] > 0 for r in rows)
    assert all(r["w8a16_kernel"].endswith("_fp32") for r in rows if r["scheme"] == "w8a16")  # 1-3 rows stream fp32
    assert "FASTLM_INT8_KERNEL" not in os.environ


def test_cpu_rows_show_the_w8a16_kernel_and_its_fp32_twin(monkeypatch):
    # enough rows for the AVX512-BF16 kernel where the CPU has it: then a w8a16_fp32 row measures the fp32 kernels
    monkeypatch.setattr(matmul, "CPU_SIZES", [64])
    monkeypatch.setattr(matmul, "CPU_ROWS", [20])
    monkeypatch.delenv("FASTLM_INT8_KERNEL", raising=False)
    rows = [r for r in matmul.measure(Options(device="cpu", quick=True, repeat=1)) if r["scheme"] != "w8a8"]
    has_bf16 = "avx512_bf16" in open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else False
    for r in rows:
        bf16 = r["scheme"] == "w8a16" and has_bf16 and r["kernel"] in ("avx512_vnni", "amx")
        assert r["w8a16_kernel"] == ("avx512_bf16" if bf16 else "dense_fp32")
    twins = {r["kernel"] for r in rows if r["scheme"] == "w8a16_fp32"}
    assert twins == {r["kernel"] for r in rows if r["scheme"] == "w8a16" and r["w8a16_kernel"] == "avx512_bf16"}
    assert all(r["w8a16_kernel"] == "dense_fp32" for r in rows if r["scheme"] == "w8a16_fp32")
    assert "FASTLM_INT8_W8A16_MATH" not in os.environ


def test_cpu_rows_keep_a_forced_path(tiny, monkeypatch):
    monkeypatch.setenv("FASTLM_INT8_KERNEL", "scalar")
    rows = matmul.measure(Options(device="cpu", quick=True, repeat=1))
    assert {r["kernel"] for r in rows} == {"scalar"}
    assert os.environ["FASTLM_INT8_KERNEL"] == "scalar"
