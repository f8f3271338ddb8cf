"""Triton rope kernel against the plain-torch reference (TRITON_INTERPRET=1, own pytest process)."""
import pytest
import torch

from fastlm.ops import reference_rope as reference

from ..ops.accuracy import assert_like_reference

pytestmark = pytest.mark.triton
rope = pytest.importorskip("fastlm.kernels.rope")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(2, 3, 4, 16), (1, 5, 3, 10)])
@pytest.mark.parametrize("per_batch", [False, True])
def test_rope(dtype, shape, per_batch):
    b, t, h, d = shape
    x = torch.randn(shape).to(dtype)
    angles = torch.randn((b, t, d // 2) if per_batch else (t, d // 2))
    for inverse in (False, True):
        got = rope.rope_fwd(x, angles.cos(), angles.sin(), inverse)
        assert_like_reference("out", got, reference.rope_fwd, x, angles.cos(), angles.sin(), inverse)


def test_rope_keeps_transposed_layout():
    x = torch.randn(2, 3, 5, 8).transpose(1, 2)  # HF (B, H, T, D) seen as (B, T, H, D)
    angles = torch.randn(5, 4)
    got = rope.rope_fwd(x, angles.cos(), angles.sin(), False)
    assert got.stride() == x.stride()
    torch.testing.assert_close(got, reference.rope_fwd(x, angles.cos(), angles.sin(), False))
