"""fastlm.ops.swiglu / geglu (C++ CPU kernels) against plain torch and the reference."""
import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops

from .accuracy import assert_as_accurate, plain_torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
CASES = [("swiglu", lambda g, u: ops.swiglu(g, u), lambda g, u: F.silu(g) * u),
         ("geglu", lambda g, u: ops.geglu(g, u), lambda g, u: F.gelu(g) * u),
         ("geglu_tanh", lambda g, u: ops.geglu(g, u, "tanh"), lambda g, u: F.gelu(g, approximate="tanh") * u)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("n", [1, 13, 256, 1000])
def test_forward_backward_vs_torch(dtype, case, n):
    _, ours, theirs = case
    h = (3 * torch.randn(3, 5, 2 * n)).to(dtype).requires_grad_()
    gate, up = h.chunk(2, dim=-1)  # strided halves of one [gate | up] projection, as in fastlm's MLP
    y = ours(gate, up)
    assert y.dtype == dtype and y.shape == gate.shape
    hd = h.detach().double().requires_grad_()
    g64, u64 = hd.chunk(2, dim=-1)
    y_ref = theirs(g64, u64)
    grad = torch.randn_like(y)
    (dh,) = torch.autograd.grad(y, h, grad)
    (dh_ref,) = torch.autograd.grad(y_ref, hd, grad.double())
    with plain_torch():  # the fastlm reference at the input dtype: what plain torch achieves
        y_plain = ours(gate, up)
    (dh_plain,) = torch.autograd.grad(y_plain, h, grad)
    assert_as_accurate("y", y, y_ref, y_plain)
    assert_as_accurate("grad", dh, dh_ref, dh_plain)


def test_backward_saves_no_intermediate():
    gate = torch.randn(64, 128, requires_grad=True)
    up = torch.randn(64, 128, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        ops.swiglu(gate, up)
    assert len(saved) == 2 and saved[0] is gate and saved[1] is up  # only the inputs, not silu(gate)


def test_fp64_and_empty():
    g = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    u = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ops.swiglu, (g, u))
    assert ops.swiglu(torch.randn(0, 5), torch.randn(0, 5)).shape == (0, 5)


@pytest.mark.parametrize("act", [0, 1, 2])
def test_opcheck(act):
    gate = torch.randn(4, 6, requires_grad=True)
    up = torch.randn(4, 6, requires_grad=True)
    torch.library.opcheck(torch.ops.fastlm.gated_act_fwd.default, (gate, up, act))
    torch.library.opcheck(torch.ops.fastlm.gated_act_bwd.default, (torch.randn(4, 6), gate.detach(), up.detach(), act))


def test_bad_inputs():
    with pytest.raises(ValueError, match="shapes differ"):
        ops.swiglu(torch.randn(2, 3), torch.randn(2, 4))
    with pytest.raises(TypeError, match="dtypes differ"):
        ops.swiglu(torch.randn(2, 3), torch.randn(2, 3, dtype=torch.bfloat16))
    with pytest.raises(TypeError, match="floating point"):
        ops.swiglu(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="approximate"):
        ops.geglu(torch.randn(2, 3), torch.randn(2, 3), approximate="fast")
    with pytest.raises(RuntimeError, match="activation code"):
        torch.ops.fastlm.gated_act_fwd(torch.randn(2, 3), torch.randn(2, 3), 7)


PACKED = [("silu", lambda g, u: F.silu(g) * u), ("gelu", lambda g, u: F.gelu(g) * u),
          ("gelu_tanh", lambda g, u: F.gelu(g, approximate="tanh") * u)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", PACKED, ids=[c[0] for c in PACKED])
@pytest.mark.parametrize("n", [1, 13, 1000])
def test_packed_forward_backward_vs_torch(dtype, case, n):
    activation, theirs = case
    h = (3 * torch.randn(3, 5, 2 * n)).to(dtype).requires_grad_()
    y = ops.gated_packed(h, activation)
    assert y.dtype == dtype and y.shape == (3, 5, n)
    hd = h.detach().double().requires_grad_()
    y_ref = theirs(*hd.chunk(2, dim=-1))
    grad = torch.randn_like(y)
    (dh,) = torch.autograd.grad(y, h, grad)
    (dh_ref,) = torch.autograd.grad(y_ref, hd, grad.double())
    with plain_torch():
        y_plain = ops.gated_packed(h, activation)
    (dh_plain,) = torch.autograd.grad(y_plain, h, grad)
    assert dh.shape == h.shape and dh.is_contiguous()
    assert_as_accurate("y", y, y_ref, y_plain)
    assert_as_accurate("grad", dh, dh_ref, dh_plain)
    # the same numbers as the two-tensor op on h's halves (same kernels)
    gate, up = h.chunk(2, dim=-1)
    approximate = "tanh" if activation == "gelu_tanh" else "none"
    y2 = ops.swiglu(gate, up) if activation == "silu" else ops.geglu(gate, up, approximate)
    (dh2,) = torch.autograd.grad(y2, h, grad)
    assert torch.equal(y, y2) and torch.equal(dh, dh2)


def test_packed_backward_has_no_cat():
    h = torch.randn(64, 256, dtype=torch.bfloat16, requires_grad=True)
    y = ops.gated_packed(h)
    with torch.profiler.profile() as prof:
        y.backward(torch.randn_like(y))
    names = {e.name for e in prof.events()}
    assert "fastlm::gated_act_bwd_packed" in names and "aten::cat" not in names


def test_packed_fp64_opcheck_and_bad_inputs():
    h = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.gated_packed(t, "gelu"), (h,))
    assert ops.gated_packed(torch.randn(0, 6)).shape == (0, 3)
    for act in (0, 1, 2):
        h32 = torch.randn(4, 12, requires_grad=True)
        torch.library.opcheck(torch.ops.fastlm.gated_act_fwd_packed.default, (h32, act))
        torch.library.opcheck(torch.ops.fastlm.gated_act_bwd_packed.default, (torch.randn(4, 6), h32.detach(), act))
    with pytest.raises(ValueError, match="even"):
        ops.gated_packed(torch.randn(2, 5))
    with pytest.raises(ValueError, match="activation"):
        ops.gated_packed(torch.randn(2, 4), "relu")
    with pytest.raises(TypeError, match="floating-point"):
        ops.gated_packed(torch.ones(2, 4, dtype=torch.long))
