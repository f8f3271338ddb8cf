"""fastlm.ops.linear_cross_entropy against the unfused head + F.cross_entropy (float64), and its memory."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.ops.matmul import cpu_gemm16_is_native

from .accuracy import assert_as_accurate, plain_torch

lce_module = importlib.import_module("fastlm.ops.linear_cross_entropy")


def _ref(hidden, weight, labels, smoothing=0.0, z=0.0, reduction="mean"):
    x = hidden.double() @ weight.double().t()
    per_row = F.cross_entropy(x, labels, label_smoothing=smoothing, reduction="none")
    valid = labels != -100
    per_row = per_row + torch.where(valid, z * torch.logsumexp(x, -1) ** 2, 0.0)
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.sum() / valid.sum()


def _assert_as_accurate_as_plain(call, oracle, hidden, weight, upstream=None):
    """call() (an op call on hidden, weight) and its gradients against oracle(hidden, weight) on float64
    copies, bounded by the same call on fastlm's plain-torch reference at the input dtype."""
    loss = call()
    h64, w64 = (t.detach().double().requires_grad_() for t in (hidden, weight))
    want = oracle(h64, w64)
    with plain_torch():
        plain = call()
    up = torch.ones_like(loss) if upstream is None else upstream
    assert_as_accurate("loss", loss, want, plain)
    got, base = (torch.autograd.grad(t, (hidden, weight), up) for t in (loss, plain))
    grads64 = torch.autograd.grad(want, (h64, w64), up.double())
    for name, g, r, p in zip(("grad hidden", "grad weight"), got, grads64, base):
        assert_as_accurate(name, g, r, p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(37, 16, 50, 8), (64, 32, 1001, 16), (5, 8, 13, 100)])  # N, d, V, chunk
@pytest.mark.parametrize("options", [(0.0, 0.0), (0.1, 1e-3)])
def test_vs_unfused(dtype, shape, options):
    n, d, v, chunk = shape
    smoothing, z = options
    hidden = torch.randn(n, d).to(dtype).requires_grad_()
    weight = (torch.randn(v, d) / d ** 0.5).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,))
    labels[::7] = -100
    call = lambda: ops.linear_cross_entropy(hidden, weight, labels, label_smoothing=smoothing,  # noqa: E731
                                            z_loss=z, chunk_size=chunk)
    # bf16: the plain reference rounds its logits to bf16, as the unfused bf16 head does
    _assert_as_accurate_as_plain(call, lambda h, w: _ref(h, w, labels, smoothing, z), hidden, weight)


def test_reduction_none_with_upstream_gradient_and_batch_shape():
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 9))
    call = lambda: ops.linear_cross_entropy(hidden, weight, labels, reduction="none", chunk_size=4)  # noqa: E731
    assert call().shape == (2, 9)
    oracle = lambda h, w: _ref(h.view(-1, 16), w, labels.view(-1), reduction="none").view(2, 9)  # noqa: E731
    _assert_as_accurate_as_plain(call, oracle, hidden, weight, upstream=torch.rand(2, 9))


def test_autocast_matches_autocast_linear():
    hidden = torch.randn(12, 16, requires_grad=True)
    weight = torch.randn(30, 16, requires_grad=True)
    labels = torch.randint(0, 30, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ops.linear_cross_entropy(hidden, weight, labels)
        unfused = ops.cross_entropy(F.linear(hidden, weight), labels)
    if cpu_gemm16_is_native(torch.bfloat16):
        torch.testing.assert_close(loss, unfused)
    else:  # no fast bf16 GEMM here: the bf16 inputs are multiplied in fp32 (the bf16 linear rounds its logits)
        h16, w16 = hidden.detach().bfloat16().float(), weight.detach().bfloat16().float()
        torch.testing.assert_close(loss, ops.cross_entropy(F.linear(h16, w16), labels), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(loss, unfused, atol=2e-2, rtol=2e-2)
    for a, b in zip(torch.autograd.grad(loss, (hidden, weight)), torch.autograd.grad(unfused, (hidden, weight))):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("grads_in_forward", [True, False])
def test_autocast_weight_gradient_is_not_rounded_to_bf16(grads_in_forward):
    """Under autocast the fp32 weight's gradient is the fp32 sum of the chunks' products, not a bf16
    value converted back (most of its elements are not bf16 numbers), and matches a float64 oracle.
    32 rows: the mean's 1/32 is exact, so only the accumulation over 4 chunks leaves bf16 numbers."""
    torch.manual_seed(0)
    hidden = torch.randn(32, 16)
    weight = torch.randn(30, 16, requires_grad=True)
    labels = torch.randint(0, 30, (32,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ops.linear_cross_entropy(hidden, weight, labels, chunk_size=8, grads_in_forward=grads_in_forward)
    (grad,) = torch.autograd.grad(loss, weight)
    assert grad.dtype == torch.float32
    assert (grad != grad.bfloat16().float()).float().mean() > 0.5
    w64 = weight.detach().bfloat16().double().requires_grad_()
    (expected,) = torch.autograd.grad(F.cross_entropy(hidden.bfloat16().double() @ w64.t(), labels), w64)
    torch.testing.assert_close(grad.double(), expected, atol=2e-3, rtol=2e-2)


@pytest.mark.parametrize("grads_in_forward", [True, False])
def test_logits_never_whole(monkeypatch, grads_in_forward):
    """Every matmul the op runs produces at most chunk_size rows of logits; gradients in the forward
    need no recompute in the backward."""
    n, d, v, chunk = 50, 8, 300, 16
    shapes = []
    real_mm = lce_module._mm  # every product of the op (torch.mm, or fastlm's fp32 GEMM on the CPU)

    def spy(a, b, **kw):
        out = real_mm(a, b, **kw)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(lce_module, "_mm", spy)
    hidden = torch.randn(n, d, requires_grad=True)
    weight = torch.randn(v, d, requires_grad=True)
    labels = torch.randint(0, v, (n,))
    ops.linear_cross_entropy(hidden, weight, labels, chunk_size=chunk, grads_in_forward=grads_in_forward).backward()
    logit_shapes = [s for s in shapes if s[1] == v]
    chunks = (n + chunk - 1) // chunk
    assert logit_shapes and max(s[0] for s in logit_shapes) <= chunk
    assert len(logit_shapes) == (chunks if grads_in_forward else 2 * chunks)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grads_in_forward_exact_and_falls_back_for_per_row_gradients(reduction):
    hidden = torch.randn(30, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (30,))
    labels[4] = -100
    for mode in (True, False):
        call = lambda: ops.linear_cross_entropy(hidden, weight, labels, reduction=reduction,  # noqa: E731
                                                chunk_size=7, grads_in_forward=mode)
        _assert_as_accurate_as_plain(call, lambda h, w: _ref(h, w, labels, reduction=reduction), hidden, weight,
                                     upstream=torch.tensor(3.0))
    # a caller that weights the rows itself: the op sees per-row gradients and recomputes
    call = lambda: ops.linear_cross_entropy(hidden, weight, labels, reduction="none",  # noqa: E731
                                            grads_in_forward=True)
    _assert_as_accurate_as_plain(call, lambda h, w: _ref(h, w, labels, reduction="none"), hidden, weight,
                                 upstream=torch.rand(30))


def test_fp64_gradcheck():
    hidden = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 6, -100, 3, 3, 1])
    assert torch.autograd.gradcheck(lambda h, w: ops.linear_cross_entropy(h, w, labels, z_loss=0.01), (hidden, weight))


@pytest.mark.parametrize("grads_in_forward", [True, False])
def test_opcheck(grads_in_forward):
    hidden = torch.randn(10, 8, requires_grad=True)
    weight = torch.randn(20, 8, requires_grad=True)
    labels = torch.randint(0, 20, (10,))
    labels[2] = -100
    args = (hidden, weight, labels, -100, 0.1, 0.0, 3, grads_in_forward)
    torch.library.opcheck(torch.ops.fastlm.linear_cross_entropy_fwd.default, args)
    _, lse, gh, gw = torch.ops.fastlm.linear_cross_entropy_fwd(hidden.detach(), weight.detach(), *args[2:])
    torch.library.opcheck(torch.ops.fastlm.linear_cross_entropy_bwd.default,
                          (torch.randn(10), hidden.detach(), weight.detach(), labels, lse, gh, gw, -100, 0.1, 0.0, 3))


def test_bad_inputs():
    hidden, weight, labels = torch.randn(4, 8), torch.randn(10, 8), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match="hidden's last dimension"):
        ops.linear_cross_entropy(torch.randn(4, 7), weight, labels)
    with pytest.raises(ValueError, match="weight must be \\(vocab, hidden\\)"):
        ops.linear_cross_entropy(hidden, torch.randn(8), labels)
    with pytest.raises(TypeError, match="dtypes differ"):
        ops.linear_cross_entropy(hidden, weight.bfloat16(), labels)
    with pytest.raises(ValueError, match="chunk_size"):
        ops.linear_cross_entropy(hidden, weight, labels, chunk_size=0)
    with pytest.raises(ValueError, match="label 10 is outside"):
        ops.linear_cross_entropy(hidden, weight, torch.tensor([0, 10, 2, 3]))


@pytest.mark.parametrize("grads_in_forward", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_rows_gives_zero_weight_gradient(grads_in_forward, dtype):
    """The weight gradient's buffer is written by the first chunk, so with no rows it must be zeroed."""
    hidden = torch.randn(0, 8).to(dtype).requires_grad_()
    weight = torch.randn(30, 8).to(dtype).requires_grad_()
    loss = ops.linear_cross_entropy(hidden, weight, torch.zeros(0, dtype=torch.long), reduction="sum",
                                    grads_in_forward=grads_in_forward)
    gh, gw = torch.autograd.grad(loss, (hidden, weight))
    assert gh.shape == hidden.shape and torch.equal(gw, torch.zeros_like(weight))
