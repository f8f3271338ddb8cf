"""fastlm.ops.logits_distill_loss (the distillation loss of logits already made) against the definition."""
import pytest
import torch

import fastlm.ops as ops
from fastlm.ops import reference_distill as reference


def _definition(s, t, loss, beta, temperature, top_k):
    """reference_distill's definition in float64 (student logits = s @ I)."""
    eye = torch.eye(s.shape[-1], dtype=torch.float64)
    return reference.linear_distill_loss(s, eye, t, loss=loss, beta=beta, temperature=temperature, top_k=top_k)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("loss,top_k", [("kl", 0), ("reverse_kl", 0), ("jsd", 0), ("kl", 5), ("jsd", 3)])
def test_loss_and_grad_equal_the_definition(dtype, loss, top_k):
    torch.manual_seed(0)
    s = (3 * torch.randn(2, 7, 61, dtype=torch.float64)).requires_grad_()
    t = 3 * torch.randn(2, 7, 61, dtype=torch.float64)
    g = torch.randn(2, 7, dtype=torch.float64)
    want = _definition(s.reshape(-1, 61), t.reshape(-1, 61), loss, 0.3, 1.7, top_k).view(2, 7)
    (want_grad,) = torch.autograd.grad((want * g).sum(), s)
    x = s.detach().to(dtype).requires_grad_()
    got = ops.logits_distill_loss(x, t.to(dtype), loss=loss, beta=0.3, temperature=1.7, top_k=top_k,
                                  reduction="none")
    (got_grad,) = torch.autograd.grad((got * g.to(got.dtype)).sum(), x)
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got.double(), want, **tol)
    torch.testing.assert_close(got_grad.double(), want_grad, **tol)
    mean = ops.logits_distill_loss(x, t.to(dtype), loss=loss, beta=0.3, temperature=1.7, top_k=top_k)
    torch.testing.assert_close(mean.double(), want.mean(), **tol)


def test_bad_input_names_the_problem():
    s, t = torch.randn(4, 9), torch.randn(4, 9)
    with pytest.raises(ValueError, match="same shape"):
        ops.logits_distill_loss(s, t[:, :8])
    with pytest.raises(ValueError, match="top_k"):
        ops.logits_distill_loss(s, t, top_k=9)
    with pytest.raises(ValueError, match="loss must be"):
        ops.logits_distill_loss(s, t, loss="mse")
