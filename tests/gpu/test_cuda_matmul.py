"""The CUDA (Triton) path of fastlm.ops.matmul and fastlm.nn.Linear, compiled for real: skipped
without a GPU (FASTLM_TEST_DEVICE=cpu runs the same checks on the CPU kernels)."""
import os

import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.nn import Linear
from fastlm.ops import reference_matmul as reference

DEVICE = os.environ.get("FASTLM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")

TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


def _close(got, want, dtype):
    scale = max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double(), want.double(), atol=TOL[dtype] * scale, rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("shape", [(1, 4096, 4096), (3, 129, 17), (257, 1000, 771), (2048, 1024, 4096)])
@pytest.mark.parametrize("activation", [None, "gelu", "gelu_tanh", "silu"])
def test_matmul_on_cuda(dtype, shape, activation):
    m, k, n = shape
    a = torch.randn(m, k, device=DEVICE).to(dtype).requires_grad_()
    w = (torch.randn(n, k, device=DEVICE) / k ** 0.5).to(dtype).requires_grad_()
    bias = torch.randn(n, device=DEVICE).to(dtype).requires_grad_()
    y = ops.matmul(a, w.t(), bias, activation)
    assert "fastlm" in type(y.grad_fn).__name__
    a64, w64, b64 = (t.detach().double().requires_grad_() for t in (a, w, bias))
    y64 = reference.matmul_fwd(a64, w64.t(), b64, activation or "none")[0]
    _close(y, y64, dtype)
    g = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, (a, w, bias), g), torch.autograd.grad(y64, (a64, w64, b64), g.double())):
        _close(got, want, dtype)


def test_matmul_matches_cublas_and_linear_under_autocast():
    a = torch.randn(512, 768, device=DEVICE, dtype=torch.float16)
    w = torch.randn(3072, 768, device=DEVICE, dtype=torch.float16) / 28
    torch.testing.assert_close(ops.matmul(a, w.t(), None, "gelu_tanh"), F.gelu(a @ w.t(), approximate="tanh"),
                               atol=2e-2, rtol=2e-2)
    lin = Linear(768, 256).to(DEVICE)
    x = torch.randn(4, 64, 768, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = lin(x)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), F.linear(x, lin.weight, lin.bias), atol=5e-2, rtol=2e-2)
