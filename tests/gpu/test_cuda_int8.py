"""The int8 ops on CUDA (Triton GEMMs and quantization, the CUDA GEMV for <= 8 rows), compiled for real.

Skipped without a GPU; FASTLM_TEST_DEVICE=cpu runs the same checks on the CPU kernels.
"""
import os

import pytest
import torch

import fastlm.ops as ops
from fastlm.ops import reference_int8 as reference
from fastlm.ops._library import has_native_op

DEVICE = os.environ.get("FASTLM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")
SHAPES = [(1, 3, 17), (17, 129, 4095), (129, 17, 3), (3, 4095, 129), (300, 257, 512)]


def _int8(*shape, low=-128):
    return torch.randint(low, 128, shape, dtype=torch.int8, device=DEVICE)


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_matmul_exact_on_cuda(m, n, k):
    a, w = _int8(m, k), _int8(n, k)
    want = reference.int8_matmul_int32(a, w.t())
    assert torch.equal(ops.int8_matmul(a, w.t(), None, None, out_dtype=torch.int32), want)
    b = _int8(k, n)
    assert torch.equal(ops.int8_matmul(a, b, None, None, out_dtype=torch.int32), reference.int8_matmul_int32(a, b))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_int8_matmul_epilogue_on_cuda(out_dtype):
    m, n, k = 33, 65, 300
    a, w = _int8(m, k), _int8(n, k)
    a_scale, b_scale = torch.rand(m, 1, device=DEVICE) + 0.01, torch.rand(n, device=DEVICE) + 0.01
    bias = torch.randn(n, device=DEVICE)
    got = ops.int8_matmul(a, w.t(), a_scale, b_scale, bias, out_dtype=out_dtype)
    want = reference.int8_matmul(a, w.t(), a_scale, b_scale, bias, out_dtype)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-6 if out_dtype == torch.float32 else 8e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group_size", [None, 16, 128])
def test_quantize_on_cuda(dtype, group_size):
    x = torch.randn(37, 1024, device=DEVICE).to(dtype)
    q, scale = ops.quantize_per_channel(x, group_size=group_size)
    want_q, want_scale = reference.int8_quantize(x, group_size or 1024)
    assert torch.equal(scale.reshape(want_scale.shape), want_scale)
    assert (q.int() - want_q.int()).abs().max() == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("group_size", [None, 64, 48])
@pytest.mark.parametrize("m", [1, 3, 8, 9, 100])  # <= 8 rows: the CUDA GEMV (when built); more: Triton
def test_int8_weight_matmul_on_cuda(dtype, group_size, m):
    n, k = 257, 1152
    wq, ws = ops.quantize_per_channel(torch.randn(n, k, device=DEVICE), group_size=group_size)
    x = torch.randn(m, k, device=DEVICE).to(dtype)
    bias = torch.randn(n, device=DEVICE)
    got = ops.int8_weight_matmul(x, wq, ws, bias, group_size=group_size)
    want = reference.int8_weight_matmul(x, wq, ws.reshape(n, -1), bias, group_size or k)
    assert got.dtype == dtype
    # 16-bit: the output's rounding (and, in dense 16-bit paths, the weights' in x's dtype) scales with |y|
    tol = {torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.float().abs().amax().item())


def test_cuda_gemv_is_built_with_cuda_torch():
    if DEVICE != "cuda" or torch.version.cuda is None:
        pytest.skip("the CUDA GEMV is part of CUDA builds only")
    assert has_native_op("int8_gemv")
    x = torch.randn(4, 256, device=DEVICE, dtype=torch.float16)
    w = _int8(64, 256, low=-127)
    s = torch.rand(64, 1, device=DEVICE) / 100
    got = torch.ops.fastlm.int8_gemv(x, w, s, None, 256)
    want = reference.int8_weight_matmul(x, w, s, None, 256)
    torch.testing.assert_close(got.float(), want.float(), rtol=3e-3, atol=3e-3)
