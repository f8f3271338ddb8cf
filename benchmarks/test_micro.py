"""Micro-benchmarks for pytest-benchmark: each op and its baseline, side by side in one group.

    pip install -e ".[bench]" && pytest benchmarks/ --benchmark-only

Each group holds fastlm and the baseline on the same shape, so pytest-benchmark's table shows the
ratio directly (its 'OPS' column). These are timing runs, not tests: nothing here is asserted about
speed. `fastlm bench` runs the full suites with plots.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops

pytest.importorskip("pytest_benchmark")

NORM_SHAPES = [(4096, 768), (1024, 4096)]


@pytest.mark.parametrize("impl", ["fastlm", "torch"])
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_rms_norm(benchmark, impl, shape):
    x, w = torch.randn(*shape), torch.randn(shape[1])
    benchmark.group = f"rms_norm {shape[0]}x{shape[1]}"
    fn = (lambda: ops.rms_norm(x, w, 1e-6)) if impl == "fastlm" else (lambda: F.rms_norm(x, (shape[1],), w, 1e-6))
    benchmark(fn)


@pytest.mark.parametrize("impl", ["fastlm", "torch"])
@pytest.mark.parametrize("shape", NORM_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_layer_norm(benchmark, impl, shape):
    x, w, b = torch.randn(*shape), torch.randn(shape[1]), torch.randn(shape[1])
    benchmark.group = f"layer_norm {shape[0]}x{shape[1]}"
    fn = ((lambda: ops.layer_norm(x, w, b, 1e-5)) if impl == "fastlm"
          else (lambda: F.layer_norm(x, (shape[1],), w, b, 1e-5)))
    benchmark(fn)


@pytest.mark.parametrize("impl", ["fastlm", "sdpa"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_attention(benchmark, impl, causal):
    q, k, v = (torch.randn(4, 512, 8, 64) for _ in range(3))
    benchmark.group = f"attention 4x512x8x64 {'causal' if causal else 'full'}"
    if impl == "fastlm":
        benchmark(lambda: ops.attention(q, k, v, causal=causal))
    else:
        qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
        benchmark(lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal))
