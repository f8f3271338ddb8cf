"""The Triton int8 kernels (under TRITON_INTERPRET=1) against the references: tiny shapes."""
from __future__ import annotations

import pytest
import torch

from fastlm.ops import reference_int8 as reference

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("rows,k,group_size", [(3, 17, 17), (2, 64, 16), (1, 5000, 5000)])
def test_triton_quantize(dtype, rows, k, group_size):
    from fastlm.kernels.int8_quantize import int8_quantize

    x = torch.randn(rows, k).to(dtype)
    x[0, :group_size] = 0.0  # an all-zero group
    q, scale = int8_quantize(x, group_size)
    want_q, want_scale = reference.int8_quantize(x, group_size)
    assert torch.equal(scale, want_scale)
    assert torch.equal(q, want_q)


@pytest.mark.parametrize("m,n,k", [(1, 3, 17), (17, 5, 40), (3, 33, 129)])
def test_triton_int8_matmul_raw_exact(m, n, k):
    from fastlm.kernels.int8_matmul import int8_matmul

    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    got = int8_matmul(a, w.t(), None, None, None, torch.int32)
    assert torch.equal(got, reference.int8_matmul_int32(a, w.t()))
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8)  # a plain (K, N) operand
    assert torch.equal(int8_matmul(a, b, None, None, None, torch.int32), reference.int8_matmul_int32(a, b))


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_triton_int8_matmul_epilogue(out_dtype):
    from fastlm.kernels.int8_matmul import int8_matmul

    m, n, k = 5, 19, 70
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    a_scale, b_scale, bias = torch.rand(m) + 0.01, torch.rand(n) + 0.01, torch.randn(n)
    got = int8_matmul(a, w.t(), a_scale, b_scale, bias, out_dtype)
    want = reference.int8_matmul(a, w.t(), a_scale, b_scale, bias, out_dtype)
    assert got.dtype == out_dtype
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-6 if out_dtype == torch.float32 else 1e-3,
                               atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group_size", [48, 32, 96])  # 32 tiles a K block; 48 folds scales per element
@pytest.mark.parametrize("m", [1, 3])
def test_triton_int8_weight_matmul(dtype, group_size, m):
    from fastlm.kernels.int8_matmul import int8_weight_matmul

    n, k = 21, 96
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8)
    scale = torch.rand(n, k // group_size) / 100 + 1e-3
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n)
    got = int8_weight_matmul(x, w, scale, bias, group_size)
    want = reference.int8_weight_matmul(x, w, scale, bias, group_size)
    assert got.dtype == dtype and got.shape == (m, n)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
