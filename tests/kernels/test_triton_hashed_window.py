"""Triton hashed window sums against the plain-torch reference (TRITON_INTERPRET=1, own pytest process):
odd sizes, wrapping windows, absent features, several bucket blocks, a deterministic backward."""
import pytest
import torch

from fastlm.ops import reference_hashed_window as reference

from ..ops.accuracy import assert_as_accurate, assert_like_reference

pytestmark = pytest.mark.triton
hashed_window = pytest.importorskip("fastlm.kernels.hashed_window")

# (rows, features, vocab, buckets): 2500 buckets span three backward blocks of 1024.
SHAPES = [(5, 3, 13, 50), (1, 1, 1, 1), (4, 2, 17, 17), (6, 3, 37, 2500), (3, 0, 9, 20)]


def _hashes(rows, features, buckets):
    h = torch.randint(0, buckets, (rows, features))
    return torch.where(torch.rand(rows, features) < 0.2, -1, h)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward(dtype, shape):
    rows, features, vocab, buckets = shape
    theta, hashes = torch.randn(buckets).to(dtype), _hashes(rows, features, buckets)
    got = hashed_window.hashed_window_sum_fwd(theta, hashes, vocab)
    assert got.dtype == dtype
    assert_like_reference("out", got, lambda t, h, v: reference.hashed_window_sum_fwd(t, h, v), theta, hashes, vocab)


@pytest.mark.parametrize("shape", SHAPES)
def test_backward_is_the_reference_and_deterministic(shape):
    rows, features, vocab, buckets = shape
    hashes, grad = _hashes(rows, features, buckets), torch.randn(rows, vocab)
    if features:
        hashes[0, 0] = buckets - 1  # a window that wraps (unless V = 1)
    got = hashed_window.hashed_window_sum_bwd(grad, hashes, buckets)
    assert got.dtype == torch.float32 and got.shape == (buckets,)
    want64 = reference.hashed_window_sum_bwd(grad.double(), hashes, buckets)
    assert_as_accurate("grad_theta", got, want64, reference.hashed_window_sum_bwd(grad, hashes, buckets),
                       torch.float32, scale=want64.abs() + rows * max(features, 1))
    assert torch.equal(got, hashed_window.hashed_window_sum_bwd(grad, hashes, buckets))
