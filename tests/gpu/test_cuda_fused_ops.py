"""The CUDA (Triton) paths of rope, swiglu/geglu, cross_entropy and linear_cross_entropy, compiled
for real: skipped without a GPU (FASTLM_TEST_DEVICE=cpu runs them on the CPU kernels instead)."""
import os

import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.ops import reference_rope

DEVICE = os.environ.get("FASTLM_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=3e-2, rtol=2e-2)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_on_cuda(dtype):
    q = torch.randn(2, 4, 37, 128, device=DEVICE).to(dtype).requires_grad_()  # HF layout (B, H, T, D)
    k = torch.randn(2, 2, 37, 128, device=DEVICE).to(dtype).requires_grad_()
    angles = torch.randn(2, 37, 64, device=DEVICE)
    qr, kr = ops.rope(q.transpose(1, 2), k.transpose(1, 2), angles.cos(), angles.sin())
    want = reference_rope.rope_fwd(q.transpose(1, 2).double(), angles.cos(), angles.sin(), False)
    torch.testing.assert_close(qr.double(), want, **TOL[dtype])
    g = torch.randn_like(qr)
    (dq,) = torch.autograd.grad(qr, q, g)
    torch.testing.assert_close(dq.transpose(1, 2).double(),
                               reference_rope.rope_fwd(g.double(), angles.cos(), angles.sin(), True), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["swiglu", "geglu", "geglu_tanh"])
def test_gated_on_cuda(dtype, kind):
    h = (3 * torch.randn(64, 2 * 1000, device=DEVICE)).to(dtype).requires_grad_()
    gate, up = h.chunk(2, dim=-1)
    fast = {"swiglu": lambda: ops.swiglu(gate, up), "geglu": lambda: ops.geglu(gate, up),
            "geglu_tanh": lambda: ops.geglu(gate, up, "tanh")}[kind]
    act = {"swiglu": F.silu, "geglu": F.gelu, "geglu_tanh": lambda x: F.gelu(x, approximate="tanh")}[kind]
    y = fast()
    hd = h.detach().double().requires_grad_()
    y_ref = act(hd.chunk(2, -1)[0]) * hd.chunk(2, -1)[1]
    torch.testing.assert_close(y.double(), y_ref, **TOL[dtype])
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, h, g)[0].double(), torch.autograd.grad(y_ref, hd, g.double())[0],
                               **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_and_linear_cross_entropy_on_cuda(dtype):
    hidden = torch.randn(300, 64, device=DEVICE).to(dtype).requires_grad_()
    weight = (torch.randn(32003, 64, device=DEVICE) / 8).to(dtype).requires_grad_()
    labels = torch.randint(0, 32003, (300,), device=DEVICE)
    labels[::5] = -100
    logits = hidden @ weight.t()
    loss = ops.cross_entropy(logits, labels, label_smoothing=0.1)
    want = F.cross_entropy(logits.double(), labels, label_smoothing=0.1)
    torch.testing.assert_close(loss.double(), want, atol=1e-4, rtol=1e-4)
    fused = ops.linear_cross_entropy(hidden, weight, labels, label_smoothing=0.1, chunk_size=128)
    torch.testing.assert_close(fused, loss, atol=1e-4, rtol=1e-4)
    for a, b in zip(torch.autograd.grad(fused, (hidden, weight)), torch.autograd.grad(loss, (hidden, weight))):
        torch.testing.assert_close(a.float(), b.float(), atol=1e-3 if dtype == torch.bfloat16 else 1e-5, rtol=2e-2)
