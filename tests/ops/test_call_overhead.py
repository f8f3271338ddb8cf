"""The hot ops' inference calls skip the Python autograd layer; matmul's CPU autograd is C++. Same results either way."""
from __future__ import annotations

import pytest
import torch

import fastlm.ops as ops
from fastlm.ops._library import call_op


def test_cpu_matmul_autograd_is_the_native_one():
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastlm::matmul_fwd", "AutogradCPU")
    w = torch.randn(6, 5, requires_grad=True)
    out = ops.matmul(torch.randn(3, 5), w.t())
    assert "MatmulFunction" in out.grad_fn.name()  # not the Python wrapper of torch.library


@pytest.mark.parametrize("activation", [None, "gelu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("frozen", [False, True])
def test_native_matmul_autograd_matches_float64(activation, dtype, frozen):
    torch.manual_seed(0)
    a = torch.randn(2, 3, 7, dtype=dtype, requires_grad=True)
    b = torch.randn(9, 7, dtype=dtype, requires_grad=not frozen)
    bias = torch.randn(9, requires_grad=True)
    out = ops.matmul(a, b.t(), bias, activation)
    grad = torch.randn_like(out)
    out.backward(grad)
    a64, b64, bias64 = (t.detach().double().requires_grad_() for t in (a, b, bias))
    ref = a64 @ b64.t() + bias64
    ref = {None: ref, "gelu": torch.nn.functional.gelu(ref), "silu": torch.nn.functional.silu(ref)}[activation]
    ref.backward(grad.double())
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=6e-2, rtol=4e-2)
    torch.testing.assert_close(out.double(), ref.detach(), **tol)
    torch.testing.assert_close(a.grad.double(), a64.grad, **tol)
    torch.testing.assert_close(bias.grad.double(), bias64.grad, **tol)
    assert (b.grad is None) if frozen else torch.allclose(b.grad.double(), b64.grad, **tol)


def test_no_grad_calls_equal_grad_mode_calls_and_record_nothing():
    torch.manual_seed(0)
    x, w = torch.randn(4, 32), torch.randn(32)
    q, k = torch.randn(1, 5, 2, 8), torch.randn(1, 5, 2, 8)
    cos, sin = torch.randn(5, 4), torch.randn(5, 4)
    calls = [lambda: ops.rms_norm(x, w), lambda: ops.layer_norm(x, w), lambda: ops.swiglu(x, x * 2),
             lambda: ops.matmul(x, w[:, None].expand(32, 3)), lambda: ops.rope(q, k, cos, sin)[0],
             lambda: ops.attention(q, k, k, causal=True)]
    for call in calls:
        graded = call()
        with torch.no_grad():
            plain = call()
        assert plain.grad_fn is None
        assert torch.equal(plain, graded)


def test_call_op_keeps_autograd_in_grad_mode():
    x = torch.randn(3, 8, requires_grad=True)
    y = call_op(torch.ops.fastlm.rms_norm_fwd, x, torch.ones(8), 1e-6)[0]
    assert y.grad_fn is not None
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
