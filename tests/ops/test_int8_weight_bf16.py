"""W8A16 int8_weight_matmul on every forced CPU path, against float64, with error bounds derived from what it computes.

On AVX512-BF16 CPUs the avx512_vnni / amx paths run vdpbf16ps above a few rows (csrc/cpu/int8_weight_bf16_kernels.cpp):
x as bf16 (bf16 x exactly; fp16 x exactly as hi + lo; fp32 x to 16 significant bits as hi + lo), int8 weights exact,
products exact, fp32 sums, the scale on the sums. The other paths (and FASTLM_INT8_W8A16_MATH=fp32) compute in fp32
with x exact. One bound covers both, per output element, with A = sum_k |x_k w_k s_k| and u = 2^-24:
    |y - exact| <= rho * A + (K + 6) * u * (A + |bias|) + u_out * |exact| (+ the same, relatively, on the error)
rho = 2^-16 for fp32 x (|x - hi - lo| <= 2^-8 * |x - hi| <= 2^-16 * |x|: 8-bit significands), 0 otherwise; u_out the output's unit
roundoff (2^-8 bf16, 2^-11 fp16, 0 fp32: its rounding is one of the K + 6).
"""
from __future__ import annotations

import pytest
import torch

import fastlm.ops as ops

pytest.importorskip("fastlm._C")

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
U_OUT = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 0.0}
# (m, n, k, group_size): rows around the tile sizes (4, 2 with group scales) and the bf16 threshold (12), columns
# around the 4-wide tiles and 16-wide panels, k tails of the 32-wide steps and of the 1024-wide slabs.
CASES = [(12, 17, 129, None), (13, 3, 4095, None), (17, 37, 1, None), (40, 65, 96, 32), (129, 5, 33, None),
         (16, 20, 2049, None), (14, 9, 2112, 64), (13, 6, 2400, 96), (1, 7, 64, None), (5, 18, 160, 32)]


def _cpu_has_avx512_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512_bf16" in f.read()
    except OSError:
        return False


def _problem(m, n, k, group_size, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    wq = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)  # -128 included
    ws = torch.rand(n, k // (group_size or k), generator=gen) + 0.25
    x = (torch.randn(m, k, generator=gen) * 2).to(dtype)
    bias = torch.randn(n, generator=gen)
    return x, wq, ws, bias


def _check_within_bound(got, x, wq, ws, bias, group_size):
    m, k = x.shape
    n = wq.shape[0]
    s = ws.double().reshape(n, -1).repeat_interleave(group_size or k, dim=1)
    wd = wq.double() * s
    exact = x.double() @ wd.T + bias.double()
    a = x.double().abs() @ wd.abs().T
    rho = 2.0**-16 if x.dtype == torch.float32 else 0.0
    u = 2.0**-24
    bound = rho * a + (k + 6) * u * (a + bias.double().abs())
    bound = bound + U_OUT[x.dtype] * (exact.abs() + bound) + 1e-30
    err = (got.double() - exact).abs()
    assert got.dtype == x.dtype and got.shape == (m, n)
    worst = (err / bound).max().item()
    assert worst <= 1.0, f"error {worst:.3g}x the bound"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k,group_size", CASES)
def test_w8a16_within_derived_bound_every_path(int8_path, dtype, m, n, k, group_size):
    x, wq, ws, bias = _problem(m, n, k, group_size, dtype, seed=m * 7919 + n * 31 + k)
    got = ops.int8_weight_matmul(x, wq, ws if group_size else ws.reshape(n), bias, group_size=group_size)
    _check_within_bound(got, x, wq, ws, bias, group_size)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k,group_size", [(40, 65, 96, 32), (16, 20, 2049, None), (13, 6, 2400, 96)])
def test_w8a16_fp32_kernels_forced(monkeypatch, dtype, m, n, k, group_size):
    # FASTLM_INT8_W8A16_MATH=fp32: the kernels of CPUs without AVX512-BF16, on every CPU
    monkeypatch.setenv("FASTLM_INT8_W8A16_MATH", "fp32")
    x, wq, ws, bias = _problem(m, n, k, group_size, dtype, seed=k)
    got = ops.int8_weight_matmul(x, wq, ws if group_size else ws.reshape(n), bias, group_size=group_size)
    _check_within_bound(got, x, wq, ws, bias, group_size)


@pytest.mark.skipif(not _cpu_has_avx512_bf16(), reason="the CPU has no AVX512-BF16")
def test_bf16_kernel_runs_and_is_exact_for_bf16_x(monkeypatch):
    # bf16 x with power-of-two scales: every product and (small integer-valued) sum is exact in fp32, so the
    # bf16 kernel's fp32 output equals the float64 result; fp32 x (two bf16 planes) must differ from the fp32
    # kernels' result in the last bits somewhere (it really ran), while both stay within the bound above.
    monkeypatch.setenv("FASTLM_INT8_KERNEL", "avx512_vnni")
    m, n, k = 20, 33, 512
    gen = torch.Generator().manual_seed(3)
    wq = torch.randint(-128, 128, (n, k), dtype=torch.int8, generator=gen)
    ws = 2.0 ** torch.randint(-3, 3, (n,), generator=gen).float()
    x = torch.randint(-64, 64, (m, k), generator=gen).to(torch.bfloat16)
    got = ops.int8_weight_matmul(x.float(), wq, ws)  # fp32 x of bf16 values: hi = x, lo = 0
    exact = x.double() @ (wq.double() * ws.double()[:, None]).T
    assert torch.equal(got.double(), exact)
    xf = torch.randn(m, k, generator=gen)
    bf16_kernel = ops.int8_weight_matmul(xf, wq, ws)
    monkeypatch.setenv("FASTLM_INT8_W8A16_MATH", "fp32")
    fp32_kernel = ops.int8_weight_matmul(xf, wq, ws)
    assert not torch.equal(bf16_kernel, fp32_kernel)
    torch.testing.assert_close(bf16_kernel, fp32_kernel, rtol=1e-4, atol=1e-4 * fp32_kernel.abs().max().item())


def test_kernel_choice_by_rows_and_dtype(monkeypatch):
    monkeypatch.setenv("FASTLM_INT8_KERNEL", "avx2")
    assert torch.ops.fastlm.int8_weight_kernel(1, torch.bfloat16, 64, 64) == "avx2_fp32"
    assert torch.ops.fastlm.int8_weight_kernel(17, torch.bfloat16, 64, 64) == "dense_fp32"
    if "avx512_vnni" not in torch.ops.fastlm.int8_cpu_kernels():
        return
    monkeypatch.setenv("FASTLM_INT8_KERNEL", "avx512_vnni")
    bf16 = _cpu_has_avx512_bf16()
    assert torch.ops.fastlm.int8_weight_kernel(4, torch.bfloat16, 64, 64) == "avx512_fp32"
    assert torch.ops.fastlm.int8_weight_kernel(12, torch.bfloat16, 64, 64) == ("avx512_bf16" if bf16 else "avx512_fp32")
    assert torch.ops.fastlm.int8_weight_kernel(12, torch.float32, 64, 64) == "avx512_fp32"
    assert torch.ops.fastlm.int8_weight_kernel(17, torch.float16, 64, 64) == ("avx512_bf16" if bf16 else "dense_fp32")
    assert torch.ops.fastlm.int8_weight_kernel(17, torch.bfloat16, 96, 48) == "dense_fp32"  # groups of 48: no bf16
    monkeypatch.setenv("FASTLM_INT8_W8A16_MATH", "fp32")
    assert torch.ops.fastlm.int8_weight_kernel(17, torch.bfloat16, 64, 64) == "dense_fp32"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k,group_size", [(1, 17, 129, None), (2, 3, 4095, None), (3, 37, 1, None),
                                              (4, 33, 130, None), (5, 16, 64, None), (1, 20, 96, 32)])
def test_w8a16_packed_weight_every_path(int8_path, dtype, m, n, k, group_size):
    # a PackedInt8Weight as w_int8: the packed AVX-512 GEMV for 1-4 rows per channel (fp32 math, x exact), else
    # the unpacked kernels; either way within the bound
    x, wq, ws, bias = _problem(m, n, k, group_size, dtype, seed=m + n + k)
    packed = ops.pack_int8_weight(wq)
    if int8_path == "avx512_vnni" and group_size is None and m <= 4:
        assert packed.usable_for_w8a16(m) == (packed.packed is not None)
    got = ops.int8_weight_matmul(x, packed, ws if group_size else ws.reshape(n), bias, group_size=group_size)
    _check_within_bound(got, x, wq, ws, bias, group_size)


def test_w8a16_packed_weight_keeps_gradients():
    n, k = 9, 64
    wq = torch.randint(-128, 128, (n, k), dtype=torch.int8)
    ws = torch.rand(n) + 0.5
    x = torch.randn(2, k, requires_grad=True)
    bias = torch.randn(n, requires_grad=True)
    y = ops.int8_weight_matmul(x, ops.pack_int8_weight(wq), ws, bias)
    gx, gb = torch.autograd.grad(y.sum(), (x, bias))
    torch.testing.assert_close(gx, (wq.float() * ws[:, None]).sum(0).expand(2, k))
    torch.testing.assert_close(gb, torch.full((n,), 2.0))
