"""Triton cross-entropy kernels against the plain-torch reference (TRITON_INTERPRET=1)."""
import pytest
import torch

from fastlm.ops import reference_cross_entropy as reference

from ..ops.accuracy import assert_as_accurate, assert_like_reference, to64

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
    assert_like_reference(("loss", "lse"), (loss, lse), reference.cross_entropy_fwd, x, labels, -100, smoothing, z)
    g = torch.randn(5)
    dx = ce.cross_entropy_bwd(g, x, labels, lse, -100, smoothing, z)
    lse64 = reference.cross_entropy_fwd(to64(x), labels, -100, smoothing, z)[1]
    assert_as_accurate("grad", dx, reference.cross_entropy_bwd(to64(g), to64(x), labels, lse64, -100, smoothing, z),
                       reference.cross_entropy_bwd(g, x, labels, lse, -100, smoothing, z))
    assert dx[1].abs().max() == 0
