"""fastlm.ops.lora_matmul (and ops.matmul's LoRA epilogue) against the plain-torch definition."""
from __future__ import annotations

import pytest
import torch

import fastlm.ops as ops
from fastlm.ops import reference_lora as reference

from .accuracy import assert_as_accurate


def _inputs(m, k, n, r, dtype, bias=True, dropout_input=False, lead=()):
    g = torch.Generator().manual_seed(m * 1000 + k * 10 + n + r)
    x = torch.randn(*lead, m, k, generator=g).to(dtype).requires_grad_()
    w = (torch.randn(n, k, generator=g) / max(k, 1) ** 0.5).to(dtype).requires_grad_()
    bias_t = torch.randn(n, generator=g).to(dtype).requires_grad_() if bias else None
    a = (torch.randn(r, k, generator=g) / k ** 0.5).to(dtype).requires_grad_()
    b = torch.randn(n, r, generator=g).to(dtype).requires_grad_()
    lx = (torch.randn(*lead, m, k, generator=g)).to(dtype).requires_grad_() if dropout_input else None
    return x, w, bias_t, a, b, lx


def _run(fn, x, w, bias, a, b, lx, scale, grad, cast=None):
    ins = [None if t is None else t.detach().to(cast or t.dtype).requires_grad_() for t in (x, w, bias, a, b, lx)]
    out = fn(ins[0], ins[1], ins[2], ins[3], ins[4], scale, ins[5])
    out.backward(grad.to(out.dtype))
    return out, [None if t is None else t.grad for t in ins]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(7, 13, 11, 3), (33, 64, 48, 8), (1, 5, 9, 1)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dropout_input", [False, True])
def test_forward_and_grads_match_float64(dtype, shape, bias, dropout_input):
    m, k, n, r = shape
    inputs = _inputs(m, k, n, r, dtype, bias, dropout_input, lead=(2,))
    grad = torch.randn(2, m, n)
    scale = 16 / r
    got, got_grads = _run(ops.lora_matmul, *inputs, scale, grad)
    want, want_grads = _run(reference.lora_matmul, *inputs, scale, grad, cast=torch.float64)
    plain, plain_grads = _run(reference.lora_matmul, *inputs, scale, grad)  # the reference at the input dtype
    assert_as_accurate("out", got, want, plain)
    for name, g, w, p in zip(("x", "weight", "bias", "a", "b", "lora_x"), got_grads, want_grads, plain_grads):
        if w is None:
            assert g is None, name
            continue
        assert_as_accurate(f"grad {name}", g, w, p, scale=w.abs() + 1)


def test_matmul_lora_epilogue_equals_base_plus_adapter():
    x, w, bias, a, b, _ = _inputs(6, 10, 12, 4, torch.float32)
    got = ops.matmul(x, w.t(), bias, "gelu", lora_a=a, lora_b=b, lora_scale=0.5)
    want = torch.nn.functional.gelu(x @ w.t() + bias + 0.5 * (x @ a.t()) @ b.t())
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_float64_and_reference_backend_use_the_reference(monkeypatch):
    x, w, bias, a, b, _ = _inputs(5, 8, 6, 2, torch.float64)
    torch.autograd.gradcheck(lambda *t: ops.lora_matmul(t[0], t[1], t[2], t[3], t[4], 2.0),
                             (x, w, bias, a, b))
    monkeypatch.setenv("FASTLM_BACKEND", "reference")
    x, w, bias, a, b, _ = _inputs(5, 8, 6, 2, torch.float32)
    torch.testing.assert_close(ops.lora_matmul(x, w, bias, a, b, 2.0), reference.lora_matmul(x, w, bias, a, b, 2.0))


def test_opcheck():
    x, w, bias, a, b, lx = (t.detach() if t is not None else None for t in _inputs(5, 9, 7, 3, torch.float32,
                                                                                  dropout_input=True))
    for args in ((x, w, bias, None, a, b, 2.0), (x, w, None, lx, a, b, 0.5)):
        torch.library.opcheck(torch.ops.fastlm.lora_matmul_fwd.default, args)
    out, xa = torch.ops.fastlm.lora_matmul_fwd(x, w, bias, None, a, b, 2.0)
    torch.library.opcheck(torch.ops.fastlm.lora_matmul_bwd.default,
                          (torch.randn_like(out), x, w, None, a, b, xa, 2.0, True, [True, True, False, True, True]))


def test_frozen_base_gets_no_weight_grad():
    x, w, bias, a, b, _ = _inputs(4, 6, 5, 2, torch.float32)
    w.requires_grad_(False)
    bias.requires_grad_(False)
    ops.lora_matmul(x, w, bias, a, b, 1.0).sum().backward()
    assert w.grad is None and bias.grad is None and a.grad is not None and b.grad is not None


def test_bad_input_is_rejected_clearly():
    x, w, bias, a, b, _ = _inputs(4, 6, 5, 2, torch.float32)
    with pytest.raises(ValueError, match="lora_a must be"):
        ops.lora_matmul(x, w, bias, a[:, :3], b, 1.0)
    with pytest.raises(ValueError, match="lora_b must be"):
        ops.lora_matmul(x, w, bias, a, b[:3], 1.0)
    with pytest.raises(ValueError, match="both lora_a and lora_b"):
        ops.matmul(x, w.t(), bias, lora_a=a)
