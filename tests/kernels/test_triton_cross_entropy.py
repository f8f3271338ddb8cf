"""Triton cross-entropy kernels against the plain-torch reference (TRITON_INTERPRET=1)."""
import pytest
import torch

from fastlm.ops import reference_cross_entropy as reference

pytestmark = pytest.mark.triton
ce = pytest.importorskip("fastlm.kernels.cross_entropy")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("vocab", [11, 5000])  # 5000 > one block: the online logsumexp over blocks
@pytest.mark.parametrize("options", [(0.0, 0.0), (0.1, 1e-3)])
def test_cross_entropy(dtype, vocab, options):
    smoothing, z = options
    x = (3 * torch.randn(5, vocab)).to(dtype)
    labels = torch.randint(0, vocab, (5,))
    labels[1] = -100
    loss, lse = ce.cross_entropy_fwd(x, labels, -100, smoothing, z)
    loss_ref, lse_ref = reference.cross_entropy_fwd(x, labels, -100, smoothing, z)
    torch.testing.assert_close(loss, loss_ref, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref, atol=1e-4, rtol=1e-5)
    g = torch.randn(5)
    dx = ce.cross_entropy_bwd(g, x, labels, lse_ref, -100, smoothing, z)
    tol = dict(atol=1e-6, rtol=1e-4) if dtype == torch.float32 else dict(atol=1e-3, rtol=1e-2)
    torch.testing.assert_close(dx, reference.cross_entropy_bwd(g, x, labels, lse_ref, -100, smoothing, z), **tol)
    assert dx[1].abs().max() == 0
