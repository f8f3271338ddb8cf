"""Plain-torch reference of the hashed window sums (fastlm.ops.hashed_window_sum): the tests' oracle
and the kernel where the extension or Triton is missing. One feature column at a time, so memory
stays (rows, vocab) instead of (rows, features, vocab)."""
from __future__ import annotations

import torch


def hashed_window_sum_fwd(theta: torch.Tensor, hashes: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """out[n, v] = sum_f theta[(hashes[n, f] + v) mod B], skipping hashes of -1; fp32 math, theta's dtype."""
    num_buckets = theta.shape[0]
    math_dtype = torch.float64 if theta.dtype == torch.float64 else torch.float32
    theta32 = theta.to(math_dtype)
    offsets = torch.arange(vocab_size, device=theta.device)
    out = torch.zeros(hashes.shape[0], vocab_size, dtype=math_dtype, device=theta.device)
    for f in range(hashes.shape[1]):
        h = hashes[:, f:f + 1]
        window = theta32[(h.clamp_min(0) + offsets) % num_buckets]
        out += window * (h >= 0).to(math_dtype)
    return out.to(theta.dtype)


def hashed_window_sum_bwd(grad_out: torch.Tensor, hashes: torch.Tensor, num_buckets: int) -> torch.Tensor:
    """grad_theta (B,): every grad_out[n, v] added to bucket (hashes[n, f] + v) mod B, for each feature f."""
    math_dtype = torch.float64 if grad_out.dtype == torch.float64 else torch.float32
    grad = grad_out.to(math_dtype)
    offsets = torch.arange(grad.shape[1], device=grad.device)
    grad_theta = torch.zeros(num_buckets, dtype=math_dtype, device=grad.device)
    for f in range(hashes.shape[1]):
        h = hashes[:, f:f + 1]
        index = (h.clamp_min(0) + offsets) % num_buckets
        grad_theta.index_add_(0, index.flatten(), (grad * (h >= 0).to(math_dtype)).flatten())
    return grad_theta
