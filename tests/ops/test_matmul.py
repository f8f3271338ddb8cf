"""fastlm.ops.matmul (C++ on CPU, both 16-bit GEMM paths) and fastlm.nn.Linear against float64 /
plain-torch references: odd shapes, dtypes, strided b, batch dims, each activation, gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.nn import MLP, Linear
from fastlm.ops import reference_matmul as reference
from fastlm.ops._library import has_native_op

from .accuracy import assert_as_accurate

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
ACTIVATIONS = [None, "gelu", "gelu_tanh", "silu"]
SHAPES = [(1, 1, 1), (1, 17, 3), (3, 129, 17), (17, 3, 129), (129, 17, 1), (129, 129, 129), (2, 0, 5), (7, 1000, 33)]
# Both CPU paths for 16-bit inputs: the native 16-bit GEMM and fp32 GEMM on converted panels.
GEMM16 = ["native", "fp32"]


def _f64(*ts):
    return [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in ts]


def _check_close(got, want64, lowp_ref, what="", terms=None):
    """accuracy.py's criterion, its floor at the magnitude of the summed terms (`terms`: the result
    computed on absolute values), where a dot product's rounding lives when its result cancels."""
    assert got.dtype == lowp_ref.dtype, what
    assert_as_accurate(what, got, want64, lowp_ref, scale=terms)


def _inputs(m, k, n, dtype, bias=True, transposed=True, lead=()):
    a = torch.randn(*lead, m, k).to(dtype).requires_grad_()
    w = torch.randn(n, k).div(max(k, 1) ** 0.5).to(dtype).requires_grad_()
    b = w.t() if transposed else w.detach().t().contiguous().requires_grad_()
    bias_t = torch.randn(n).to(dtype).requires_grad_() if bias else None
    return a, w, b, bias_t


def test_native_ops_are_registered():
    assert has_native_op("matmul_fwd") and has_native_op("matmul_bwd")


@pytest.mark.parametrize("gemm16", GEMM16)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_grads_match_float64(monkeypatch, gemm16, dtype, shape):
    if dtype == torch.float32 and gemm16 == "fp32":
        pytest.skip("fp32 has one path")
    monkeypatch.setenv("FASTLM_CPU_GEMM16", gemm16)
    m, k, n = shape
    for act in ACTIVATIONS:
        for has_bias, transposed in ((True, True), (False, False)):
            a, w, b, bias = _inputs(m, k, n, dtype, has_bias, transposed)
            leaf_b = w if transposed else b
            y = ops.matmul(a, b, bias, act)
            assert "MatmulFunction" in y.grad_fn.name()  # the registered op ran (its CPU autograd is C++)
            a64, b64, bias64 = _f64(a, b, bias)
            y64 = reference.matmul_fwd(a64, b64, bias64, act or "none")[0]
            what = f"{dtype} {shape} {act} bias={has_bias} bT={transposed}"
            abs_b64 = b64.detach().abs()
            terms = a64.detach().abs() @ abs_b64 + (bias64.detach().abs() if has_bias else 0)
            _check_close(y, y64, reference.matmul_fwd(a, b, bias, act or "none")[0], "out " + what, terms)
            g = torch.randn_like(y)
            params = [a, leaf_b] + ([bias] if has_bias else [])
            grads = torch.autograd.grad(y, params, g)
            # the low-precision reference: the same algorithm in plain torch (fp32 math from the
            # pre-activation saved in the input dtype, each gradient rounded once)
            pre = reference.matmul_fwd(a, b, bias, act or "none")[1]
            grads_lowp = reference.matmul_bwd(g, a, b, bias, pre, act or "none", True, True)
            grads_lowp = [grads_lowp[0], grads_lowp[1].t() if transposed else grads_lowp[1], grads_lowp[2]]
            p64 = [a64, b64] + ([bias64] if has_bias else [])
            grads64 = list(torch.autograd.grad(y64, p64, g.double()))
            grads64[1:2] = [grads64[1].t()] if transposed else [grads64[1]]
            g_abs = g.double().abs() * 1.2  # |act'| <= 1.13
            grad_terms = [g_abs @ abs_b64.t(), a64.detach().abs().t() @ g_abs, g_abs.sum(0)]
            grad_terms[1] = grad_terms[1].t() if transposed else grad_terms[1]
            for name, got, want, lowp, t in zip(("grad_a", "grad_b", "grad_bias"), grads, grads64, grads_lowp,
                                                grad_terms):
                _check_close(got, want, lowp, f"{name} {what}", t)
            if transposed and m:
                assert grads[1].is_contiguous()  # a weight's gradient comes back in the weight's layout


@pytest.mark.parametrize("gemm16", GEMM16)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_many_panels_batch_dims_and_strided_a(monkeypatch, gemm16, dtype):
    # K = 16384 makes the fp32 path split N into 64-column panels and M into 512-row chunks.
    monkeypatch.setenv("FASTLM_CPU_GEMM16", gemm16)
    a_full = torch.randn(2, 300, 2 * 16384).to(dtype)
    a = a_full[..., ::2]  # strided (..., K) input
    w = (torch.randn(130, 16384) / 128).to(dtype)
    bias = torch.randn(130)  # fp32 bias with 16-bit inputs is allowed
    y = ops.matmul(a, w.t(), bias, "gelu_tanh")
    assert y.shape == (2, 300, 130) and y.dtype == dtype
    y64 = reference.matmul_fwd(a.double().reshape(-1, 16384), w.double().t(), bias.double(), "gelu_tanh")[0]
    lowp = reference.matmul_fwd(a.reshape(-1, 16384), w.t(), bias.to(dtype), "gelu_tanh")[0]
    _check_close(y.reshape(-1, 130), y64, lowp)


def test_activations_match_torch_and_extremes():
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([-100.0, -88.0, 0.0, 88.0, 100.0])])
    eye = torch.eye(x.numel())
    for act, fn in (("gelu", F.gelu), ("gelu_tanh", lambda t: F.gelu(t, approximate="tanh")), ("silu", F.silu),
                    ("gelu_new", lambda t: F.gelu(t, approximate="tanh"))):
        got = ops.matmul(x[None], eye, None, act)[0]
        assert_as_accurate(act, got, fn(x.double()), fn(x))  # against torch's activation in fp64 and fp32
        xg = x[None].clone().requires_grad_()
        (g_got,) = torch.autograd.grad(ops.matmul(xg, eye, None, act).sum(), xg)
        leaves = (x.double().requires_grad_(), x.clone().requires_grad_())  # fp64 oracle, fp32 plain torch
        grads = [torch.autograd.grad(fn(xr).sum(), xr)[0] for xr in leaves]
        assert_as_accurate(f"{act} grad", g_got[0], *grads)


@pytest.mark.parametrize("act", ["none", "gelu", "gelu_tanh", "silu"])
def test_reference_backward_matches_autograd_float64(act):
    a, b, bias = (torch.randn(5, 7, dtype=torch.float64), torch.randn(7, 4, dtype=torch.float64),
                  torch.randn(4, dtype=torch.float64))
    torch.autograd.gradcheck(lambda a_, b_, c_: reference.matmul_fwd(a_, b_, c_, act)[0],
                             [t.clone().requires_grad_() for t in (a, b, bias)])
    pre = reference.matmul_fwd(a, b, bias, act)[1]
    g = torch.randn(5, 4, dtype=torch.float64)
    got = reference.matmul_bwd(g, a, b, bias, pre, act, True, True)
    ts = [t.clone().requires_grad_() for t in (a, b, bias)]
    want = torch.autograd.grad(reference.matmul_fwd(*ts, act)[0], ts, g)
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y)
    # fp64 through the public function: the reference path, differentiable by torch
    torch.autograd.gradcheck(lambda a_: ops.matmul(a_, b, bias, act if act != "none" else None),
                             [a.clone().requires_grad_()])


def test_only_needed_grads_and_no_bias_grad():
    a = torch.randn(4, 8)
    w = torch.randn(3, 8, requires_grad=True)
    (gw,) = torch.autograd.grad(ops.matmul(a, w.t(), None, "silu").sum(), w)
    want = torch.autograd.grad(F.silu(a @ w.t()).sum(), w)[0]
    torch.testing.assert_close(gw, want)
    a.requires_grad_()
    (ga,) = torch.autograd.grad(ops.matmul(a, w.detach().t()).sum(), a)
    torch.testing.assert_close(ga, torch.ones(4, 3) @ w.detach())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["none", "gelu_tanh"])
def test_opcheck(dtype, act):
    a = torch.randn(5, 9).to(dtype).requires_grad_()
    b = torch.randn(7, 9).to(dtype).t().requires_grad_()
    bias = torch.randn(7).to(dtype).requires_grad_()
    torch.library.opcheck(torch.ops.fastlm.matmul_fwd.default, (a, b, bias, act))
    torch.library.opcheck(torch.ops.fastlm.matmul_fwd.default, (a, b, None, act))
    out, pre = torch.ops.fastlm.matmul_fwd(a.detach(), b.detach(), bias.detach(), act)
    torch.library.opcheck(torch.ops.fastlm.matmul_bwd.default,
                          (torch.randn_like(out), a.detach(), b.detach(), bias.detach(), pre, act, True, True))


def test_reference_backend(monkeypatch):
    monkeypatch.setenv("FASTLM_BACKEND", "reference")
    a, w = torch.randn(3, 4), torch.randn(5, 4)
    y = ops.matmul(a, w.t(), None, "gelu")
    assert "fastlm" not in type(y.grad_fn).__name__ if y.grad_fn else True
    torch.testing.assert_close(y, F.gelu(a @ w.t()))


def test_bad_input_is_rejected_clearly():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    with pytest.raises(ValueError, match="K mismatch"):
        ops.matmul(a, torch.randn(5, 5))
    with pytest.raises(TypeError, match="same dtype"):
        ops.matmul(a, b.bfloat16())
    with pytest.raises(ValueError, match="unknown activation 'relu6'"):
        ops.matmul(a, b, activation="relu6")
    with pytest.raises(ValueError, match=r"bias must have shape \(5,\)"):
        ops.matmul(a, b, torch.randn(4))
    with pytest.raises(TypeError, match="bias must be"):
        ops.matmul(a.half(), b.half(), torch.randn(5).bfloat16())
    with pytest.raises(ValueError, match="b must be 2-D"):
        ops.matmul(a, torch.randn(4))
    with pytest.raises(TypeError, match="floating point"):
        ops.matmul(a.long(), b.long())
    with pytest.raises(RuntimeError, match="K mismatch"):  # the op itself checks too
        torch.ops.fastlm.matmul_fwd(a, torch.randn(5, 5), None, "none")
    with pytest.raises(RuntimeError, match="unknown activation"):
        torch.ops.fastlm.matmul_fwd(a, b, None, "tanh")


# ---------------------------------------------------------------- fastlm.nn.Linear


def test_linear_is_an_nn_linear_with_the_same_state_dict():
    torch.manual_seed(0)
    ours = Linear(13, 7)
    theirs = torch.nn.Linear(13, 7)
    assert isinstance(ours, torch.nn.Linear)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 13, requires_grad=True)
    torch.testing.assert_close(ours(x), theirs(x))
    g1 = torch.autograd.grad(ours(x).square().sum(), (x, ours.weight, ours.bias))
    g2 = torch.autograd.grad(theirs(x).square().sum(), (x, theirs.weight, theirs.bias))
    for p, q in zip(g1, g2):
        torch.testing.assert_close(p, q)
    with pytest.raises(ValueError, match="unknown activation"):
        Linear(3, 4, activation="tanh")


@pytest.mark.parametrize("gemm16", GEMM16)
def test_linear_under_cpu_autocast_bf16(monkeypatch, gemm16):
    monkeypatch.setenv("FASTLM_CPU_GEMM16", gemm16)
    ours = Linear(64, 48)
    theirs = torch.nn.Linear(64, 48)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(4, 10, 64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, y_ref = ours(x), theirs(x)
    assert y.dtype == torch.bfloat16 == y_ref.dtype
    torch.testing.assert_close(y.float(), (x @ ours.weight.t() + ours.bias).detach(), atol=0.05, rtol=0.02)
    torch.testing.assert_close(y, y_ref, atol=0.05, rtol=0.02)
    y.float().sum().backward()
    assert ours.weight.grad.dtype == torch.float32  # grads reach the fp32 parameters
    torch.testing.assert_close(ours.bias.grad, torch.full((48,), 40.0))


def test_linear_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(Linear(8, 32, activation="silu"), Linear(32, 1))
    x = torch.randn(256, 8)
    target = (x[:, :1] * x[:, 1:2]).sin()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(150):
        loss = F.mse_loss(model(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("activation", ["gelu_new", "gelu", "silu", "relu"])
def test_mlp_fused_activation_equals_unfused(activation):
    mlp = MLP(16, 40, activation=activation)
    x = torch.randn(2, 5, 16)
    want = mlp.proj(mlp.act(F.linear(x, mlp.fc.weight, mlp.fc.bias)))
    torch.testing.assert_close(mlp(x), want, atol=1e-5, rtol=1e-5)
    assert (mlp.fused_act is not None) == (activation != "relu")
