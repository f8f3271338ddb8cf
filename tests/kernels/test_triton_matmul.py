"""The Triton fused matmul (under TRITON_INTERPRET=1) against the fp64 reference: tiny odd shapes."""
from __future__ import annotations

import pytest
import torch

from fastlm.ops import reference_matmul as reference

from ..ops.accuracy import assert_as_accurate

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 3, 17), (17, 33, 5), (20, 16, 40)])
@pytest.mark.parametrize("activation", ["none", "gelu", "gelu_tanh", "silu"])
def test_triton_matmul_forward_backward(dtype, shape, activation):
    from fastlm.kernels.matmul import matmul_bwd, matmul_fwd

    m, k, n = shape
    a = torch.randn(m, k).to(dtype)
    w = (torch.randn(n, k) / k ** 0.5).to(dtype)
    b = w.t()  # transposed view, read in place
    bias = torch.randn(n).to(dtype)
    out, pre = matmul_fwd(a, b, bias, activation)
    a64, b64, bias64 = (t.double().requires_grad_() for t in (a, b, bias))
    out64, pre64 = reference.matmul_fwd(a64, b64, bias64, activation)
    out_plain, pre_plain = reference.matmul_fwd(a, b, bias, activation)  # plain torch at the input dtype
    assert_as_accurate("out", out, out64, out_plain)
    if activation != "none":
        assert_as_accurate("pre", pre, pre64, pre_plain)
    g = torch.randn(m, n).to(dtype)
    grad_a, grad_b, grad_bias = matmul_bwd(g, a, b, bias, pre, activation, True, True)
    want = torch.autograd.grad(out64, (a64, b64, bias64), g.double())
    plain = reference.matmul_bwd(g, a, b, bias, pre_plain, activation, True, True)
    for name, got, ref, base in zip(("grad a", "grad b", "grad bias"), (grad_a, grad_b, grad_bias), want, plain):
        assert got.shape == ref.shape and got.dtype == dtype
        assert_as_accurate(name, got, ref, base)
    assert grad_b.t().is_contiguous()  # the weight's gradient in the weight's layout


def test_triton_matmul_no_bias_contiguous_b_and_k0():
    from fastlm.kernels.matmul import matmul_bwd, matmul_fwd

    a, b = torch.randn(5, 7), torch.randn(7, 3)
    out, pre = matmul_fwd(a, b, None, "none")
    torch.testing.assert_close(out, a @ b)
    assert pre.numel() == 0
    ga, gb, gbias = matmul_bwd(torch.ones(5, 3), a, b, None, pre, "none", False, True)
    assert ga.numel() == 0 and gbias.numel() == 0
    torch.testing.assert_close(gb, a.t() @ torch.ones(5, 3))
    out0, _ = matmul_fwd(torch.randn(4, 0), torch.randn(0, 3), torch.ones(3), "silu")
    torch.testing.assert_close(out0, torch.nn.functional.silu(torch.ones(4, 3)))
