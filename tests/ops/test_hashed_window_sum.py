"""fastlm.ops.hashed_window_sum (C++ CPU kernel) against a per-element loop of the definition and the
plain-torch reference: forward, gradient (gradcheck in float64 on the registered op), odd sizes,
wrap-around windows, absent features, determinism, bad input."""
import pytest
import torch

from fastlm import ops
from fastlm.ops import reference_hashed_window as reference

from .accuracy import assert_as_accurate, plain_torch

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# (rows, features, vocab, buckets): odd sizes, a vocabulary as big as the buckets (every window wraps
# but one), one feature, no features, more features than vocabulary.
SHAPES = [(7, 3, 13, 50), (1, 1, 1, 1), (5, 2, 17, 17), (33, 4, 65, 1000), (4, 0, 9, 20), (3, 11, 2, 5)]


def naive(theta: torch.Tensor, hashes: torch.Tensor, vocab: int) -> torch.Tensor:
    """The definition, element by element, in float64."""
    b = theta.shape[0]
    out = torch.zeros(hashes.shape[0], vocab, dtype=torch.float64)
    for n in range(hashes.shape[0]):
        for f in range(hashes.shape[1]):
            h = int(hashes[n, f])
            if h < 0:
                continue
            for v in range(vocab):
                out[n, v] += float(theta[(h + v) % b])
    return out


def naive_grad(grad_out: torch.Tensor, hashes: torch.Tensor, buckets: int) -> torch.Tensor:
    g = torch.zeros(buckets, dtype=torch.float64)
    for n in range(hashes.shape[0]):
        for f in range(hashes.shape[1]):
            h = int(hashes[n, f])
            if h >= 0:
                for v in range(grad_out.shape[1]):
                    g[(h + v) % buckets] += float(grad_out[n, v])
    return g


def random_hashes(rows, features, buckets):
    h = torch.randint(0, buckets, (rows, features))
    return torch.where(torch.rand(rows, features) < 0.2, -1, h)  # some absent features


def test_cpu_kernel_is_native():
    for name in ("hashed_window_sum_fwd", "hashed_window_sum_bwd"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastlm::{name}", "CPU")


@pytest.mark.parametrize("shape", SHAPES)
def test_reference_is_the_definition(shape):
    rows, features, vocab, buckets = shape
    theta, hashes = torch.randn(buckets, dtype=torch.float64), random_hashes(rows, features, buckets)
    g = torch.randn(rows, vocab, dtype=torch.float64)
    torch.testing.assert_close(reference.hashed_window_sum_fwd(theta, hashes, vocab), naive(theta, hashes, vocab))
    torch.testing.assert_close(reference.hashed_window_sum_bwd(g, hashes, buckets), naive_grad(g, hashes, buckets))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_kernel_forward_and_grad_as_accurate_as_plain_torch(dtype, shape):
    rows, features, vocab, buckets = shape
    theta = torch.randn(buckets).to(dtype).requires_grad_()
    hashes = random_hashes(rows, features, buckets).view(rows, 1, features)  # leading dims pass through
    out = ops.hashed_window_sum(theta, hashes, vocab)
    assert out.dtype == dtype and out.shape == (rows, 1, vocab)
    g = torch.randn(rows, 1, vocab).to(dtype)
    out.backward(g)
    flat = hashes.view(rows, features)
    ref64 = naive(theta.detach().double(), flat, vocab)
    grad64 = naive_grad(g.view(rows, vocab).double(), flat, buckets)
    with plain_torch():
        theta_plain = theta.detach().clone().requires_grad_()
        plain = ops.hashed_window_sum(theta_plain, hashes, vocab)
        if plain.requires_grad:  # without features the reference's output does not depend on theta
            plain.backward(g)
    plain_grad = theta_plain.grad if theta_plain.grad is not None else torch.zeros_like(theta)
    assert_as_accurate("forward", out.view(rows, vocab), ref64, plain.view(rows, vocab), dtype)
    assert theta.grad.dtype == dtype
    assert_as_accurate("grad_theta", theta.grad, grad64, plain_grad, dtype)


def test_gradcheck_of_the_registered_op_in_float64():
    """torch.ops.fastlm.hashed_window_sum_fwd runs the C++ kernel in fp64 too: check its autograd."""
    theta = torch.randn(11, dtype=torch.float64, requires_grad=True)
    hashes = torch.tensor([[0, 10, -1], [5, 3, 9], [-1, -1, 2]])
    assert torch.autograd.gradcheck(lambda t: torch.ops.fastlm.hashed_window_sum_fwd(t, hashes, 7), (theta,))
    assert torch.autograd.gradcheck(lambda t: ops.hashed_window_sum(t, hashes, 11), (theta,))  # the reference path


def test_large_backward_is_deterministic_and_matches_reference():
    """Many threads' bucket ranges (2**17 buckets > one grain) give the reference's sums, the same every time."""
    buckets, vocab = 2**17 + 3, 301
    hashes = random_hashes(64, 3, buckets)
    hashes[:, 0] = buckets - 5  # windows that wrap, all on the same buckets
    g = torch.randn(64, vocab)
    first = torch.ops.fastlm.hashed_window_sum_bwd(g, hashes, buckets)
    assert torch.equal(first, torch.ops.fastlm.hashed_window_sum_bwd(g, hashes, buckets))
    want = reference.hashed_window_sum_bwd(g.double(), hashes, buckets)
    plain = reference.hashed_window_sum_bwd(g, hashes, buckets)
    assert_as_accurate("grad_theta", first, want, plain, torch.float32, scale=want.abs() + 64 * 3)


@pytest.mark.parametrize("call, message", [
    (lambda: ops.hashed_window_sum(torch.randn(4, 2), torch.zeros(1, 1, dtype=torch.long), 2), "1-D"),
    (lambda: ops.hashed_window_sum(torch.randn(8), torch.zeros(1, 1, dtype=torch.int32), 2), "int64"),
    (lambda: ops.hashed_window_sum(torch.randn(8), torch.zeros(1, 1, dtype=torch.long), 9), "vocab_size"),
    (lambda: ops.hashed_window_sum(torch.randn(8), torch.full((1, 1), 8), 2), r"\[-1, 8\)"),
    (lambda: ops.hashed_window_sum(torch.randn(8), torch.full((1, 1), -2), 2), r"\[-1, 8\)"),
])
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
