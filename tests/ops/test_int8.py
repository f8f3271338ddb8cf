"""int8 ops on the CPU (C++): quantization, W8A8 int8_matmul and W8A16 int8_weight_matmul.

Integer products are compared exactly with int64 torch math; every vector path (AMX, AVX-512 VNNI,
AVX-VNNI, AVX2, scalar) is forced with FASTLM_INT8_KERNEL; dequantized outputs are checked against
fp32 math within the quantization error bound derived in `_w8a8_bound`.
"""
from __future__ import annotations

import pytest
import torch

import fastlm.ops as ops
from fastlm.ops import reference_int8 as reference
from fastlm.ops._library import has_native_op

from tests.ops.conftest import INT8_PATHS as PATHS
# (M, N, K) from the odd sizes 1, 3, 17, 129, 4095 (combinations that keep the scalar path fast).
SHAPES = [(1, 1, 1), (3, 17, 129), (17, 3, 4095), (129, 17, 3), (1, 129, 4095), (4095, 3, 17), (17, 129, 1),
          (3, 3, 64), (5, 7, 96)]
FLOAT_DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture
def path(int8_path):  # tests/ops/conftest.py
    return int8_path


def _int8(*shape, low=-128):
    return torch.randint(low, 128, shape, dtype=torch.int8)


def test_native_ops_are_registered():
    for name in ("int8_quantize", "int8_matmul", "int8_weight_matmul", "int8_cpu_kernels"):
        assert has_native_op(name)
    kernels = torch.ops.fastlm.int8_cpu_kernels()
    assert kernels[-1] == "scalar" and set(kernels) <= set(PATHS)


# ---------------------------------------------------------------- quantization


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (17, 129), (2, 5, 4095)])
def test_quantize_per_token_matches_reference_exactly(dtype, shape):
    x = (torch.randn(shape) * 3).to(dtype)
    x[..., 0] = 0.0
    q, scale = ops.quantize_per_token(x)
    k = shape[-1]
    want_q, want_scale = reference.int8_quantize(x.reshape(-1, k), k)
    assert q.dtype == torch.int8 and q.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == (*shape[:-1], 1)
    assert torch.equal(q.reshape(-1, k), want_q) and torch.equal(scale.reshape(-1, 1), want_scale)
    # round to nearest: |x - q * s| <= s / 2 (plus fp32 rounding of the division)
    err = (x.float() - q.float() * scale).abs()
    assert (err <= scale * (0.5 + 1e-5)).all()
    assert q.abs().max() <= 127


def test_quantize_zero_tiny_and_exact_rows():
    x = torch.zeros(4, 8)
    x[1, 3] = 1e-40  # subnormal: absmax / 127 underflows, the scale is clamped to FLT_MIN
    x[2] = torch.arange(-127, 129, 32, dtype=torch.float32)[:8]
    x[3, 0] = -2.5
    q, scale = ops.quantize_per_token(x)
    assert scale[0, 0] == 1.0 and (q[0] == 0).all()  # an all-zero row: scale 1, no NaN
    assert scale[1, 0] == torch.finfo(torch.float32).tiny and torch.isfinite(q[1].float()).all()
    assert q[3, 0] == -127 and scale[3, 0] == pytest.approx(2.5 / 127)
    want_q, want_scale = reference.int8_quantize(x, 8)
    assert torch.equal(q, want_q) and torch.equal(scale, want_scale)


@pytest.mark.parametrize("group_size", [None, 1, 16, 96])
def test_quantize_per_channel(group_size):
    w = torch.randn(7, 192)
    q, scale = ops.quantize_per_channel(w, group_size=group_size)
    g = group_size or 192
    assert scale.shape == ((7,) if group_size is None else (7, 192 // g))
    want_q, want_scale = reference.int8_quantize(w, g)
    assert torch.equal(q, want_q) and torch.equal(scale.reshape(want_scale.shape), want_scale)
    deq = reference.dequantize_weight(q, scale.reshape(7, -1))
    assert ((deq - w).abs() <= scale.reshape(7, -1).repeat_interleave(g, 1) * (0.5 + 1e-5)).all()


# ---------------------------------------------------------------- W8A8


@pytest.mark.parametrize("m,n,k", SHAPES)
def test_int8_matmul_int32_exact_every_path(path, m, n, k):
    a = _int8(m, k)
    w = _int8(n, k)
    a[0, 0] = -128  # -128 in both operands: the AVX2 path must take its exact variant
    w[0, 0] = -128
    got = ops.int8_matmul(a, w.t(), None, None, out_dtype=torch.int32)
    assert got.dtype == torch.int32 and got.shape == (m, n)
    assert torch.equal(got, reference.int8_matmul_int32(a, w.t()))
    a_q = a.clamp(-127, 127)  # what quantize_per_token produces: the AVX2 fast (sign) variant
    assert torch.equal(ops.int8_matmul(a_q, w.t(), None, None, out_dtype=torch.int32),
                       reference.int8_matmul_int32(a_q, w.t()))


def test_int8_matmul_extreme_values_do_not_overflow(path):
    k = 4095
    for av, wv in ((-128, -128), (-128, 127), (127, 127), (127, -128)):
        a = torch.full((2, k), av, dtype=torch.int8)
        w = torch.full((3, k), wv, dtype=torch.int8)
        got = ops.int8_matmul(a, w.t(), None, None, out_dtype=torch.int32)
        assert (got == av * wv * k).all()


def test_int8_matmul_layouts(path):
    k, n = 129, 17
    base = _int8(6, 2 * k)
    a = base[:, ::2]  # strided rows and columns
    b = _int8(k, n)  # a plain (K, N) matrix, not a transposed weight
    w = _int8(n, 2 * k)[:, :k]  # a weight view with a row stride > K
    want = reference.int8_matmul_int32(a, b)
    assert torch.equal(ops.int8_matmul(a, b, None, None, out_dtype=torch.int32), want)
    assert torch.equal(ops.int8_matmul(a, w.t(), None, None, out_dtype=torch.int32),
                       reference.int8_matmul_int32(a, w.t()))
    a3 = _int8(2, 3, k)  # batched activations (..., K)
    got = ops.int8_matmul(a3, b, None, None, out_dtype=torch.int32)
    assert got.shape == (2, 3, n)
    assert torch.equal(got, reference.int8_matmul_int32(a3.reshape(6, k), b).reshape(2, 3, n))


@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_int8_matmul_epilogue_matches_reference(path, out_dtype, with_bias):
    m, n, k = 5, 33, 200
    a, w = _int8(m, k), _int8(n, k)
    a_scale, b_scale = torch.rand(m, 1) + 0.01, torch.rand(n) + 0.01
    bias = torch.randn(n) if with_bias else None
    got = ops.int8_matmul(a, w.t(), a_scale, b_scale, bias, out_dtype=out_dtype)
    want = reference.int8_matmul(a, w.t(), a_scale.reshape(-1), b_scale, bias, out_dtype)
    assert got.dtype == out_dtype and got.shape == (m, n)
    # fp32: the same operations up to contraction of multiply-add (1 ulp); 16-bit: one rounding step
    rtol = 1e-6 if out_dtype == torch.float32 else 8e-3
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=1e-5)


def _w8a8_bound(x: torch.Tensor, w: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                w_deq: torch.Tensor) -> torch.Tensor:
    """|x w^T - x^ w^^T| <= |x| |w - w^|^T + |x - x^| |w^|^T <= (s_w / 2) ||x||_1 + (s_x / 2) ||w^||_1 per output."""
    return (w_scale.reshape(1, -1) / 2) * x.abs().sum(-1, keepdim=True) + \
        (x_scale.reshape(-1, 1) / 2) * w_deq.abs().sum(-1).reshape(1, -1)


@pytest.mark.parametrize("m,n,k", [(1, 129, 4095), (17, 3, 129), (16, 64, 1024)])
def test_w8a8_dequantized_within_quantization_bound(m, n, k):
    x, w, bias = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    x[:, :3] *= 20  # an outlier channel makes the bound loose on purpose... and still must hold
    xq, xs = ops.quantize_per_token(x)
    wq, ws = ops.quantize_per_channel(w)
    got = ops.int8_matmul(xq, wq.t(), xs, ws, bias)
    exact = x.double() @ w.double().t() + bias.double()
    bound = _w8a8_bound(x.double(), w.double(), xs.double(), ws.double(), wq.double() * ws.double().reshape(-1, 1))
    err = (got.double() - exact).abs()
    assert (err <= bound * (1 + 1e-4) + 1e-4).all()
    # and the bound is not vacuous: typical errors are far below it
    assert err.mean() < bound.mean() / 4


# ---------------------------------------------------------------- W8A16


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("group_size", [None, 32, 48])
@pytest.mark.parametrize("m", [1, 3, 16, 40])
def test_int8_weight_matmul_matches_reference(path, dtype, group_size, m):
    n, k = 37, 192
    w = torch.randn(n, k)
    wq, ws = ops.quantize_per_channel(w, group_size=group_size)
    x = torch.randn(m, k).to(dtype)
    bias = torch.randn(n)
    got = ops.int8_weight_matmul(x, wq, ws, bias, group_size=group_size)
    want = reference.int8_weight_matmul(x, wq, ws.reshape(n, -1), bias, group_size or k)
    assert got.dtype == dtype and got.shape == (m, n)
    # 16-bit: the output's rounding (and, in the dense bf16 path, the weights') scales with |y|
    tol = {torch.float32: 2e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.float().abs().amax().item())


@pytest.mark.parametrize("group_size", [None, 64, 48])
@pytest.mark.parametrize("m", [1, 5, 17, 70])
def test_int8_weight_matmul_bf16_default_paths(m, group_size):
    # what decoding and prefill run by default (AMX / streaming / dense, chosen by m and the CPU)
    n, k = 70, 384
    wq, ws = ops.quantize_per_channel(torch.randn(n, k), group_size=group_size)
    x = torch.randn(m, k).to(torch.bfloat16)
    got = ops.int8_weight_matmul(x, wq, ws, group_size=group_size)
    want = reference.int8_weight_matmul(x, wq, ws.reshape(n, -1), None, group_size or k)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2 * want.float().abs().amax().item())


@pytest.mark.parametrize("group_size", [None, 32])
@pytest.mark.parametrize("m,n,k", [(4, 200, 96), (16, 65, 160), (9, 17, 95), (16, 130, 1)])
def test_int8_weight_matmul_bf16_decoding_tiles_are_exact(path, m, n, k, group_size):
    # bf16 x (decoding sizes, every path incl. AMX's 4-block tiling with partial blocks and odd k): bf16 x int8
    # products are exact and sums fp32, so the bf16 output is the float64 result rounded (within 1 bf16 ulp)
    if group_size is not None and k % group_size:
        pytest.skip("group_size must divide K")
    wq = _int8(n, k)  # includes -128
    ws = torch.rand(n, k // (group_size or k)) + 0.5
    if group_size is None:  # power-of-two scales: w * scale is exact in bf16 for the grouped case too
        ws = ws.reshape(n)
    else:
        ws = 2.0 ** torch.randint(-3, 3, ws.shape).float()
    x = torch.randn(m, k).to(torch.bfloat16)
    bias = torch.randn(n)
    got = ops.int8_weight_matmul(x, wq, ws, bias, group_size=group_size)
    wd = wq.double() * ws.double().reshape(n, -1).repeat_interleave(group_size or k, dim=1)
    exact = x.double() @ wd.T + bias.double()
    ulp = exact.abs().clamp_min(1e-30) * 2.0**-7  # bf16 spacing bound (8-bit significand)
    assert ((got.double() - exact).abs() <= ulp + 1e-5 * exact.abs().amax()).all()


@pytest.mark.parametrize("group_size", [None, 64])
@pytest.mark.parametrize("shape", [(1, 1, 4095), (2, 3, 129), (17, 4095, 3), (20, 17, 192)])
def test_int8_weight_matmul_within_quantization_bound(shape, group_size):
    batch, n, k = shape[0], shape[1], shape[2]
    if group_size is not None and k % group_size:
        group_size = None
    x, w = torch.randn(batch, 2, k), torch.randn(n, k)
    wq, ws = ops.quantize_per_channel(w, group_size=group_size)
    got = ops.int8_weight_matmul(x, wq, ws, group_size=group_size)
    assert got.shape == (batch, 2, n)
    exact = x.double() @ w.double().t()
    # |x (w - w^)^T| <= sum_k |x_k| s_group(k) / 2
    s = ws.double().reshape(n, -1).repeat_interleave(k // ws.reshape(n, -1).shape[1], 1)
    bound = x.double().abs() @ (s / 2).t()
    assert ((got.double() - exact).abs() <= bound * (1 + 1e-4) + 1e-4).all()


def test_int8_weight_matmul_gradient():
    n, k = 9, 64
    wq, ws = ops.quantize_per_channel(torch.randn(n, k), group_size=16)
    x = torch.randn(3, k, requires_grad=True)
    bias = torch.randn(n, requires_grad=True)
    y = ops.int8_weight_matmul(x, wq, ws, bias, group_size=16)
    grad = torch.randn_like(y)
    gx, gb = torch.autograd.grad(y, (x, bias), grad)
    deq = reference.dequantize_weight(wq, ws)
    torch.testing.assert_close(gx, grad @ deq)
    torch.testing.assert_close(gb, grad.sum(0))


# ---------------------------------------------------------------- bad input, backends, opcheck


def test_bad_inputs_raise_clear_errors():
    a, w = _int8(4, 16), _int8(8, 16)
    s4, s8 = torch.ones(4), torch.ones(8)
    with pytest.raises(TypeError, match="a_int8 must be int8"):
        ops.int8_matmul(a.float(), w.t(), s4, s8)
    with pytest.raises(TypeError, match="b_int8 must be int8"):
        ops.int8_matmul(a, w.t().int(), s4, s8)
    with pytest.raises(ValueError, match="K mismatch"):
        ops.int8_matmul(a, _int8(8, 15).t(), s4, s8)
    with pytest.raises(ValueError, match="a_scale must have shape"):
        ops.int8_matmul(a, w.t(), torch.ones(5), s8)
    with pytest.raises(ValueError, match="b_scale must have shape"):
        ops.int8_matmul(a, w.t(), s4, torch.ones(4))
    with pytest.raises(ValueError, match="bias must have shape"):
        ops.int8_matmul(a, w.t(), s4, s8, torch.ones(3))
    with pytest.raises(ValueError, match="a_scale and b_scale are required"):
        ops.int8_matmul(a, w.t(), None, s8)
    with pytest.raises(ValueError, match="raw int32 sums"):
        ops.int8_matmul(a, w.t(), s4, s8, out_dtype=torch.int32)
    with pytest.raises(TypeError, match="out_dtype"):
        ops.int8_matmul(a, w.t(), s4, s8, out_dtype=torch.float64)
    with pytest.raises(TypeError, match="a_scale must be floating point"):
        ops.int8_matmul(a, w.t(), torch.ones(4, dtype=torch.int32), s8)
    x = torch.randn(2, 16)
    with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16"):
        ops.int8_weight_matmul(x.double(), w, s8)
    with pytest.raises(TypeError, match="w_int8 must be int8"):
        ops.int8_weight_matmul(x, w.float(), s8)
    with pytest.raises(ValueError, match="K mismatch"):
        ops.int8_weight_matmul(torch.randn(2, 15), w, s8)
    with pytest.raises(ValueError, match="per-channel w_scale must have shape"):
        ops.int8_weight_matmul(x, w, torch.ones(8, 2))
    with pytest.raises(ValueError, match="group_size=5 must be positive and divide K=16"):
        ops.int8_weight_matmul(x, w, torch.ones(8, 3), group_size=5)
    with pytest.raises(ValueError, match=r"w_scale must have shape \(8, 2\)"):
        ops.int8_weight_matmul(x, w, s8, group_size=8)
    with pytest.raises(TypeError, match="x must be floating point"):
        ops.quantize_per_token(torch.arange(4))
    with pytest.raises(ValueError, match="divide K=10"):
        ops.quantize_per_channel(torch.randn(4, 10), group_size=3)  # "... positive and divide K=10"


def test_forced_kernel_names_are_checked(monkeypatch):
    monkeypatch.setenv("FASTLM_INT8_KERNEL", "avx9000")
    with pytest.raises(RuntimeError, match="FASTLM_INT8_KERNEL=avx9000 is not one of"):
        ops.int8_matmul(_int8(2, 8), _int8(8, 3), None, None, out_dtype=torch.int32)


def test_reference_backend_agrees(monkeypatch):
    a, w = _int8(3, 40), _int8(5, 40)
    x = torch.randn(3, 40)
    native = ops.int8_matmul(a, w.t(), None, None, out_dtype=torch.int32), ops.quantize_per_token(x)
    monkeypatch.setenv("FASTLM_BACKEND", "reference")
    assert torch.equal(ops.int8_matmul(a, w.t(), None, None, out_dtype=torch.int32), native[0])
    q, s = ops.quantize_per_token(x)
    assert torch.equal(q, native[1][0]) and torch.equal(s, native[1][1])


def test_opcheck():
    x = torch.randn(5, 64)
    torch.library.opcheck(torch.ops.fastlm.int8_quantize.default, (x, 16))
    a, b = _int8(5, 64), _int8(64, 7)
    torch.library.opcheck(torch.ops.fastlm.int8_matmul.default, (a, b, None, None, None, torch.int32))
    torch.library.opcheck(torch.ops.fastlm.int8_matmul.default,
                          (a, b, torch.rand(5), torch.rand(7), torch.randn(7), torch.bfloat16))
    w, ws = _int8(7, 64), torch.rand(7, 4)
    torch.library.opcheck(torch.ops.fastlm.int8_weight_matmul.default, (x, w, ws, torch.randn(7), 16))
    torch.library.opcheck(torch.ops.fastlm.int8_weight_matmul.default, (x.bfloat16().requires_grad_(), w, ws, None, 16))
