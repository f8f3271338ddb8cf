"""fastlm.ops.linear_cross_entropy against the unfused head + F.cross_entropy (float64), and its memory."""
import importlib

import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops
from fastlm.ops.matmul import cpu_gemm16_is_native

lce_module = importlib.import_module("fastlm.ops.linear_cross_entropy")


def _ref(hidden, weight, labels, smoothing=0.0, z=0.0, reduction="mean"):
    x = hidden.double() @ weight.double().t()
    per_row = F.cross_entropy(x, labels, label_smoothing=smoothing, reduction="none")
    valid = labels != -100
    per_row = per_row + torch.where(valid, z * torch.logsumexp(x, -1) ** 2, 0.0)
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.sum() / valid.sum()


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
    loss = ops.linear_cross_entropy(hidden, weight, labels, label_smoothing=smoothing, z_loss=z, chunk_size=chunk)
    want = _ref(hidden, weight, labels, smoothing, z)
    grads = torch.autograd.grad(loss, (hidden, weight))
    grads_ref = torch.autograd.grad(want, (hidden, weight))
    if dtype == torch.float32:
        torch.testing.assert_close(loss.double(), want, atol=1e-5, rtol=1e-5)
        for g, r in zip(grads, grads_ref):
            torch.testing.assert_close(g.double(), r.double(), atol=1e-6, rtol=1e-4)
    else:  # bf16 logits: compare with the unfused bf16 head (the same rounding of the matmul)
        logits = hidden @ weight.t()
        unfused = ops.cross_entropy(logits, labels, label_smoothing=smoothing, z_loss=z)
        torch.testing.assert_close(loss, unfused, atol=1e-4, rtol=1e-4)
        for g, r in zip(grads, torch.autograd.grad(unfused, (hidden, weight))):
            torch.testing.assert_close(g.float(), r.float(), atol=2e-2, rtol=2e-2)


def test_reduction_none_with_upstream_gradient_and_batch_shape():
    hidden = torch.randn(2, 9, 16, requires_grad=True)
    weight = torch.randn(40, 16, requires_grad=True)
    labels = torch.randint(0, 40, (2, 9))
    got = ops.linear_cross_entropy(hidden, weight, labels, reduction="none", chunk_size=4)
    assert got.shape == (2, 9)
    want = _ref(hidden.view(-1, 16), weight, labels.view(-1), reduction="none").view(2, 9)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    g = torch.rand(2, 9)
    grads_ref = torch.autograd.grad(want, (hidden, weight), g.double())
    for a, b in zip(torch.autograd.grad(got, (hidden, weight), g), grads_ref):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-4)


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
def test_logits_never_whole(monkeypatch, grads_in_forward):
    """Every matmul the op runs produces at most chunk_size rows of logits; gradients in the forward
    need no recompute in the backward."""
    n, d, v, chunk = 50, 8, 300, 16
    shapes = []
    real_mm = torch.mm

    def spy(a, b, **kw):
        out = real_mm(a, b, **kw)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(lce_module.torch, "mm", spy)
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
        want = _ref(hidden, weight, labels, reduction=reduction)
        loss = ops.linear_cross_entropy(hidden, weight, labels, reduction=reduction, chunk_size=7,
                                        grads_in_forward=mode)
        grads_ref = torch.autograd.grad(3 * want, (hidden, weight))
        for a, b in zip(torch.autograd.grad(3 * loss, (hidden, weight)), grads_ref):
            torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-4)
    # a caller that weights the rows itself: the op sees per-row gradients and recomputes
    per_row = ops.linear_cross_entropy(hidden, weight, labels, reduction="none", grads_in_forward=True)
    w = torch.rand(30)
    got = torch.autograd.grad((per_row * w).sum(), (hidden, weight))
    ref = torch.autograd.grad((_ref(hidden, weight, labels, reduction="none") * w.double()).sum(), (hidden, weight))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-5, rtol=1e-4)


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
