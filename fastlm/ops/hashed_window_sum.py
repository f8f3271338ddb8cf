"""Hashed window sums: the scores of a hashed maximum-entropy (log-linear) model in one call.

    scores = fastlm.ops.hashed_window_sum(theta, hashes, vocab_size)   # theta (B,), hashes (..., F) -> (..., V)

scores[..., v] = sum_f theta[(hashes[..., f] + v) mod B]: each feature hash names ONE contiguous
window of V buckets (wrapping around the end of theta), so the model never holds a (features, V)
matrix (Mikolov's RNNME "direct connections"). A hash of -1 is an absent feature (it adds nothing).
fp32 math; the output has theta's dtype. The backward scatters the score gradients back into those
windows (grad_theta, deterministic); hashes get no gradient. CPU tensors run the C++ kernel
(csrc/cpu/hashed_window.cpp), CUDA tensors the Triton one (kernels/hashed_window.py: a deterministic
backward without atomics), fp64 and FASTLM_BACKEND=reference the plain-torch reference (gather /
index_add_).
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_hashed_window as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import register_backward_op, register_op


def _fake_fwd(theta, hashes, vocab_size):
    return theta.new_empty(hashes.shape[0], vocab_size)


def _fake_bwd(grad_out, hashes, num_buckets):
    dtype = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    return grad_out.new_empty(num_buckets, dtype=dtype)


def _triton_fwd():
    from fastlm.kernels import hashed_window

    return hashed_window.hashed_window_sum_fwd


def _triton_bwd():
    from fastlm.kernels import hashed_window

    return hashed_window.hashed_window_sum_bwd


register_op("hashed_window_sum_fwd", reference=reference.hashed_window_sum_fwd, triton=_triton_fwd, fake=_fake_fwd)
register_op("hashed_window_sum_bwd", reference=reference.hashed_window_sum_bwd, triton=_triton_bwd, fake=_fake_bwd)
register_backward_op("hashed_window_sum_bwd")


def _setup(ctx, inputs, output):
    theta, hashes, _vocab_size = inputs
    ctx.save_for_backward(hashes)
    ctx.num_buckets, ctx.theta_dtype = theta.shape[0], theta.dtype


def _backward(ctx, grad):
    (hashes,) = ctx.saved_tensors
    grad_theta = torch.ops.fastlm.hashed_window_sum_bwd(grad, hashes, ctx.num_buckets)
    return grad_theta.to(ctx.theta_dtype), None, None


torch.library.register_autograd("fastlm::hashed_window_sum_fwd", _backward, setup_context=_setup)


def _check(theta: torch.Tensor, hashes: torch.Tensor, vocab_size: int) -> None:
    op = "hashed_window_sum"
    if not isinstance(theta, torch.Tensor) or not theta.is_floating_point() or theta.dim() != 1:
        raise ValueError(f"{op}: theta must be a 1-D floating-point tensor (the buckets), got "
                         f"{getattr(theta, 'dtype', type(theta).__name__)} {tuple(getattr(theta, 'shape', ()))}")
    if not isinstance(hashes, torch.Tensor) or hashes.dtype != torch.int64 or hashes.dim() < 1:
        raise ValueError(f"{op}: hashes must be an int64 tensor (..., features), got "
                         f"{getattr(hashes, 'dtype', type(hashes).__name__)} {tuple(getattr(hashes, 'shape', ()))}")
    if hashes.device != theta.device:
        raise ValueError(f"{op}: hashes are on {hashes.device} but theta is on {theta.device}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 1 <= vocab_size <= theta.shape[0]:
        raise ValueError(f"{op}: vocab_size = {vocab_size!r}: expected an integer in [1, {theta.shape[0]}] "
                         f"(at most the number of buckets)")
    if hashes.device.type == "cpu" and hashes.numel() and not torch.compiler.is_compiling():
        low, high = int(hashes.min()), int(hashes.max())
        if low < -1 or high >= theta.shape[0]:
            raise ValueError(f"{op}: hashes must lie in [-1, {theta.shape[0]}) (-1: no feature), "
                             f"got values from {low} to {high}")


def hashed_window_sum(theta: torch.Tensor, hashes: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """(..., vocab_size) scores in theta's dtype for hashes (..., F); see the module doc."""
    _check(theta, hashes, vocab_size)
    lead = hashes.shape[:-1]
    flat = hashes.reshape(lead.numel(), hashes.shape[-1])  # also with no features (F = 0)
    if use_reference(theta):
        out = reference.hashed_window_sum_fwd(theta, flat, vocab_size)
    else:
        out = torch.ops.fastlm.hashed_window_sum_fwd(theta, flat, vocab_size)
    return out.view(*lead, vocab_size)
