"""fastlm.ops.cross_entropy (C++ CPU kernels) against F.cross_entropy (+ z-loss) in float64."""
import pytest
import torch
import torch.nn.functional as F

import fastlm.ops as ops

from .accuracy import assert_as_accurate, plain_torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _torch_loss(logits, labels, smoothing=0.0, z=0.0, reduction="mean"):
    """F.cross_entropy plus the z-loss term z * lse^2 on the counted rows, in float64."""
    x = logits.double()
    per_row = F.cross_entropy(x, labels, ignore_index=-100, label_smoothing=smoothing, reduction="none")
    valid = labels != -100
    per_row = per_row + torch.where(valid, z * torch.logsumexp(x, -1) ** 2, 0.0)
    if reduction == "none":
        return per_row
    return per_row.sum() if reduction == "sum" else per_row.sum() / valid.sum()


def _inputs(n, v, dtype, ignored=(1,)):
    logits = (4 * torch.randn(n, v)).to(dtype).requires_grad_()
    labels = torch.randint(0, v, (n,))
    for i in ignored:
        if i < n:
            labels[i] = -100
    return logits, labels


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [1, 7, 1000, 32003])
@pytest.mark.parametrize("options", [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-4), (0.2, 1e-3)])
def test_vs_torch(dtype, v, options):
    smoothing, z = options
    logits, labels = _inputs(6 if v > 1000 else 9, v, dtype)
    loss = ops.cross_entropy(logits, labels, label_smoothing=smoothing, z_loss=z)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    x64 = logits.detach().double().requires_grad_()
    want = _torch_loss(x64, labels, smoothing, z)
    (grad,) = torch.autograd.grad(loss, logits)
    (grad_ref,) = torch.autograd.grad(want, x64)
    assert grad.dtype == dtype
    with plain_torch():  # the fastlm reference (fp32 math on the given logits), as plain torch does it
        plain = ops.cross_entropy(logits, labels, label_smoothing=smoothing, z_loss=z)
    (grad_plain,) = torch.autograd.grad(plain, logits)
    assert_as_accurate("loss", loss, want, plain)
    assert_as_accurate("grad", grad, grad_ref, grad_plain)
    assert grad[1].abs().max() == 0  # the ignored row


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_and_shapes(reduction):
    logits = torch.randn(2, 5, 11, requires_grad=True)  # (B, T, V) with labels (B, T)
    labels = torch.randint(0, 11, (2, 5))
    labels[0, 2] = -100
    got = ops.cross_entropy(logits, labels, reduction=reduction)
    x64 = logits.detach().double().requires_grad_()
    want = _torch_loss(x64.view(-1, 11), labels.view(-1), reduction=reduction)
    if reduction == "none":
        assert got.shape == labels.shape
        want = want.view(2, 5)
    g = torch.randn_like(got)
    with plain_torch():
        plain = ops.cross_entropy(logits, labels, reduction=reduction)
    assert_as_accurate("loss", got, want, plain)
    grads = (torch.autograd.grad(t, x, g.to(t.dtype))[0] for t, x in ((got, logits), (want, x64), (plain, logits)))
    assert_as_accurate("grad", *grads)


def test_noncontiguous_logits_and_custom_ignore_index():
    base = torch.randn(8, 40)
    logits = base[:, ::2]  # row stride 40, column stride 2
    labels = torch.tensor([0, 3, 5, 7, 19, 19, 2, 1])
    got = ops.cross_entropy(logits, labels, ignore_index=19)
    want = F.cross_entropy(logits, labels, ignore_index=19)
    torch.testing.assert_close(got, want)


def test_all_ignored_is_nan_like_torch():
    logits = torch.randn(3, 5)
    labels = torch.full((3,), -100)
    assert torch.isnan(ops.cross_entropy(logits, labels)) and torch.isnan(F.cross_entropy(logits, labels))
    assert ops.cross_entropy(logits, labels, reduction="sum") == 0


def test_fp64_gradcheck():
    logits = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, -100, 5, 2])
    assert torch.autograd.gradcheck(lambda x: ops.cross_entropy(x, labels, label_smoothing=0.1, z_loss=0.01),
                                    (logits,))


def test_opcheck():
    logits = torch.randn(5, 9, requires_grad=True)
    labels = torch.tensor([1, -100, 8, 0, 3])
    torch.library.opcheck(torch.ops.fastlm.cross_entropy_fwd.default, (logits, labels, -100, 0.1, 1e-3))
    loss, lse = torch.ops.fastlm.cross_entropy_fwd(logits.detach(), labels, -100, 0.1, 1e-3)
    torch.library.opcheck(torch.ops.fastlm.cross_entropy_bwd.default,
                          (torch.randn(5), logits.detach(), labels, lse, -100, 0.1, 1e-3))


def test_bad_inputs():
    logits = torch.randn(3, 5)
    with pytest.raises(ValueError, match="label 5 is outside \\[0, 5\\)"):
        ops.cross_entropy(logits, torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="label -3"):
        ops.cross_entropy(logits, torch.tensor([0, -3, 1]))
    with pytest.raises(TypeError, match="labels must be integers"):
        ops.cross_entropy(logits, torch.zeros(3))
    with pytest.raises(ValueError, match="labels have 2 elements for 3 rows"):
        ops.cross_entropy(logits, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="label_smoothing"):
        ops.cross_entropy(logits, torch.tensor([0, 1, 2]), label_smoothing=1.5)
    with pytest.raises(ValueError, match="z_loss"):
        ops.cross_entropy(logits, torch.tensor([0, 1, 2]), z_loss=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        ops.cross_entropy(logits, torch.tensor([0, 1, 2]), reduction="avg")
    with pytest.raises(RuntimeError, match="outside"):  # the kernel checks on its own too
        torch.ops.fastlm.cross_entropy_fwd(logits, torch.tensor([0, 9, 1]), -100, 0.0, 0.0)
