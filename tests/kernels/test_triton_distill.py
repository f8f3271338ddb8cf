"""Triton distillation row kernel against the plain-torch reference (TRITON_INTERPRET=1)."""
import pytest
import torch

from fastlm.ops import reference_distill as reference

from ..ops.accuracy import assert_like_reference

pytestmark = pytest.mark.triton
kernel = pytest.importorskip("fastlm.kernels.distill")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [13, 2500])  # 2500 > one block: the streaming logsumexp over blocks
@pytest.mark.parametrize("loss,beta", [(0, 0.5), (1, 0.5), (2, 0.3), (2, 0.0)])
@pytest.mark.parametrize("top_k", [0, 5])
def test_distill_loss(dtype, vocab, loss, beta, top_k):
    n, T = 4, 1.5
    s = (3 * torch.randn(n, vocab)).to(dtype)
    t = 3 * torch.randn(n, vocab)
    g = torch.rand(n)
    teacher, index = reference.teacher_top_k(t, top_k, T) if top_k else (t.to(dtype), None)
    got = kernel.distill_loss(s, teacher, index, g, loss, beta, T, True)
    assert_like_reference(("loss", "grad"), got, lambda *a: reference.distill_loss(*a, loss, beta, T, True),
                          s, teacher, index, g)
    assert kernel.distill_loss(s, teacher, index, g, loss, beta, T, False)[1].numel() == 0
