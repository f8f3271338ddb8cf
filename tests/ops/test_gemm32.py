"""fp32 GEMMs on torch's BLAS or oneDNN (csrc/cpu/gemm32.cpp): both paths, forced, against float64."""
from __future__ import annotations

import pytest
import torch

import fastlm.ops as ops
from fastlm.ops import reference_matmul as reference

SHAPES = [(1, 7, 5), (8, 33, 17), (37, 64, 129), (130, 5, 3)]  # M below and above oneDNN's row threshold


@pytest.mark.parametrize("path", ["torch", "onednn"])
@pytest.mark.parametrize("m, k, n", SHAPES)
@pytest.mark.parametrize("activation", [None, "gelu_tanh"])
@pytest.mark.parametrize("transposed", [True, False])
def test_fp32_matmul_on_each_gemm_matches_float64(monkeypatch, path, m, k, n, activation, transposed):
    if path == "onednn" and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    monkeypatch.setenv("FASTLM_CPU_GEMM32", path)
    torch.manual_seed(m * 1000 + k)
    a = torch.randn(m, k, requires_grad=True)
    w = torch.randn(n, k, requires_grad=True)
    bias = torch.randn(n, requires_grad=True)
    b = w.t() if transposed else w.detach().t().contiguous().requires_grad_()
    leaf = w if transposed else b
    out = ops.matmul(a, b, bias, activation)
    grad = torch.randn_like(out)
    out.backward(grad)
    a64, b64, bias64 = (t.detach().double().requires_grad_() for t in (a, b, bias))
    ref = reference.matmul_fwd(a64, b64, bias64, activation or "none")[0]
    ref.backward(grad.double())
    tol = dict(atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    torch.testing.assert_close(a.grad.double(), a64.grad, **tol)
    torch.testing.assert_close(bias.grad.double(), bias64.grad, **tol)
    torch.testing.assert_close(leaf.grad.double(), b64.grad.t() if transposed else b64.grad, **tol)


def test_the_path_is_reported_and_a_bad_name_is_refused(monkeypatch):
    monkeypatch.setenv("FASTLM_CPU_GEMM32", "torch")
    assert torch.ops.fastlm.matmul_cpu_gemm32() == "torch"
    if torch.backends.mkldnn.is_available():
        monkeypatch.setenv("FASTLM_CPU_GEMM32", "onednn")
        assert torch.ops.fastlm.matmul_cpu_gemm32() == "onednn"
    monkeypatch.delenv("FASTLM_CPU_GEMM32")
    assert torch.ops.fastlm.matmul_cpu_gemm32() in ("torch", "onednn")  # auto: measured once per process
    monkeypatch.setenv("FASTLM_CPU_GEMM32", "mkl")
    with pytest.raises(RuntimeError, match="FASTLM_CPU_GEMM32=mkl is not one of auto, torch, onednn"):
        ops.matmul(torch.randn(16, 4), torch.randn(4, 4))
