"""The chunked CLIP loss against the plain definition (full logits, cross-entropy both ways), float64 grads."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastlm.ops.contrastive import contrastive_loss


def reference(image, text, logit_scale):
    logits = logit_scale.exp() * image @ text.T
    labels = torch.arange(image.shape[0])
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


@pytest.mark.parametrize("b,d,chunk", [(1, 4, 1), (7, 5, 3), (33, 16, 8), (64, 32, 64), (50, 8, 1000)])
def test_loss_and_gradients_equal_the_definition(b, d, chunk):
    torch.manual_seed(b)
    image = F.normalize(torch.randn(b, d, dtype=torch.float64), dim=-1).requires_grad_()
    text = F.normalize(torch.randn(b, d, dtype=torch.float64), dim=-1).requires_grad_()
    scale = torch.tensor(2.3, dtype=torch.float64, requires_grad=True)
    want = reference(image, text, scale)
    want_grads = torch.autograd.grad(want, (image, text, scale))
    got = contrastive_loss(image, text, scale, chunk_size=chunk)
    got_grads = torch.autograd.grad(got, (image, text, scale))
    torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g.double(), w, atol=1e-6, rtol=1e-5)


def test_gradcheck_small():
    torch.manual_seed(0)
    image = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    text = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda i, t, s: contrastive_loss(i, t, s, chunk_size=2), (image, text, scale))


def test_bf16_features_accumulate_in_fp32():
    torch.manual_seed(1)
    image, text = (F.normalize(torch.randn(40, 16), dim=-1) for _ in range(2))
    scale = torch.tensor(2.0)
    got = contrastive_loss(image.bfloat16(), text.bfloat16(), scale, chunk_size=7)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, reference(image.bfloat16().float(), text.bfloat16().float(), scale),
                               atol=2e-2, rtol=1e-2)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="must be \\(B, D\\) of one shape"):
        contrastive_loss(torch.randn(3, 4), torch.randn(2, 4), torch.tensor(1.0))
