"""fastlm.ops.sparse24_matmul (2:4 compressed weights) against a float64 dense matmul, every CPU path
(AVX-512, AVX2, scalar: forced with FASTLM_SPARSE24_KERNEL), odd sizes on both sides of the gather/panel
switch; the compressed format against a dense weight; autograd in x and bias."""
from __future__ import annotations

import pytest
import torch

from fastlm import ops
from fastlm.ops.reference_sparse24 import compress24, decompress24
from fastlm.prune import nm_mask
from tests.ops.accuracy import assert_as_accurate, plain_torch
from tests.ops.conftest import force_cpu_path

PATHS = ["avx512", "avx2", "scalar"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    return force_cpu_path(request.param, torch.ops.fastlm.sparse24_cpu_kernels, "FASTLM_SPARSE24_KERNEL", monkeypatch)


def sparse_weight(n: int, k: int, zeros_too: bool = False) -> torch.Tensor:
    w = torch.randn(n, k)
    w = w * nm_mask(w, 2, 4)
    if zeros_too:  # groups keeping fewer than 2 (a zero value stored)
        w[::3, ::5] = 0
    return w


def test_native_kernel_is_registered():
    from fastlm.ops._library import has_native_op

    assert has_native_op("sparse24_matmul")
    assert torch.ops.fastlm.sparse24_cpu_kernels()[-1] == "scalar"


@pytest.mark.parametrize("k", [1, 2, 3, 5, 8, 13, 64, 67, 130, 257])
def test_format_round_trip(k):
    w = sparse_weight(7, k, zeros_too=True)
    values, meta = compress24(w)
    groups = -(-k // 4)
    assert values.shape == (7, 2 * groups) and meta.shape == (7, -(-groups // 2)) and meta.dtype == torch.uint8
    assert torch.equal(decompress24(values, meta, k), w)
    assert values.numel() * 4 + meta.numel() <= 0.5 * w.numel() * 4 + w.numel() / 8 + 64  # ~0.53x fp32


def test_format_refuses_a_dense_weight():
    with pytest.raises(ValueError, match="not 2:4 sparse"):
        compress24(torch.ones(2, 8))


@pytest.mark.parametrize("m", [1, 2, 5, 8, 9, 20, 33, 64, 65, 130])
@pytest.mark.parametrize("n,k", [(1, 4), (3, 1), (17, 13), (33, 67), (64, 128), (5, 258), (70, 100)])
def test_matches_float64_dense(path, m, n, k):
    w = sparse_weight(n, k, zeros_too=(n % 2 == 1))
    values, meta = compress24(w)
    x = torch.randn(m, k)
    bias = torch.randn(n) if (m + n) % 2 else None
    got = ops.sparse24_matmul(x, values, meta, k, bias)
    ref64 = x.double() @ w.double().t() + (bias.double() if bias is not None else 0)
    with plain_torch():
        lowp = ops.sparse24_matmul(x, values, meta, k, bias)
    # the dense fp32 product (what the sparse kernel replaces) as the plain-torch error baseline
    dense32 = x @ w.t() + (bias if bias is not None else 0)
    base = lowp if (lowp.double() - ref64).abs().max() >= (dense32.double() - ref64).abs().max() else dense32
    assert_as_accurate(f"sparse24 {path} m={m} n={n} k={k}", got, ref64, base,
                       scale=x.abs().double() @ w.abs().double().t())


def test_leading_dims_dtypes_and_autograd(path):
    w = sparse_weight(12, 20)
    values, meta = compress24(w)
    x = torch.randn(2, 3, 20, requires_grad=True)
    bias = torch.randn(12, requires_grad=True)
    y = ops.sparse24_matmul(x, values, meta, 20, bias)
    assert y.shape == (2, 3, 12)
    (y * torch.arange(12.0)).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    b2 = bias.detach().clone().requires_grad_(True)
    ((x2 @ w.t() + b2) * torch.arange(12.0)).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-5) and torch.allclose(bias.grad, b2.grad, atol=1e-5)
    yb = ops.sparse24_matmul(x.detach().bfloat16(), values, meta, 20)
    assert yb.dtype == torch.bfloat16
    y64 = ops.sparse24_matmul(x.detach().double(), values, meta, 20)
    assert y64.dtype == torch.float64 and torch.allclose(y64, x.detach().double() @ w.double().t())


@pytest.mark.parametrize("args,message", [
    (dict(k=7), "K mismatch"),
    (dict(values=torch.zeros(4, 3)), "values must be fp32"),
    (dict(meta=torch.zeros(4, 2, dtype=torch.int8)), "meta must be uint8"),
    (dict(bias=torch.zeros(5)), "bias must have shape"),
])
def test_bad_input(args, message):
    w = sparse_weight(4, 8)
    values, meta = compress24(w)
    kw = dict(x=torch.randn(2, 8), values=values, meta=meta, k=8, bias=None) | args
    with pytest.raises((ValueError, TypeError), match=message):
        ops.sparse24_matmul(kw["x"], kw["values"], kw["meta"], kw["k"], kw["bias"])


def test_forced_unknown_path_is_an_error(monkeypatch):
    monkeypatch.setenv("FASTLM_SPARSE24_KERNEL", "sse9")
    w = sparse_weight(4, 8)
    with pytest.raises(RuntimeError, match="FASTLM_SPARSE24_KERNEL=sse9"):
        ops.sparse24_matmul(torch.randn(2, 8), *compress24(w), 8)


def test_opcheck_and_compile():
    w = sparse_weight(6, 10)
    values, meta = compress24(w)
    x = torch.randn(3, 10, requires_grad=True)
    torch.library.opcheck(torch.ops.fastlm.sparse24_matmul.default, (x, values, meta, 10, torch.randn(6)))
    compiled = torch.compile(lambda x: ops.sparse24_matmul(x, values, meta, 10), fullgraph=True, backend="eager")
    assert torch.allclose(compiled(x.detach()), x.detach() @ w.t(), atol=1e-5)
