"""Hashed window sums in Triton (fastlm.ops.hashed_window_sum on CUDA tensors).

forward: one program sums the F windows theta[(h + v) mod B] of one row over a block of v.
backward: one program owns a block of buckets and adds, in a fixed order, the parts of the windows
that cover it: the windows are sorted by start (a wrapping window also appears once more at start - B),
and searchsorted gives each block the range of windows that reach it. No atomics: deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _fwd_kernel(THETA, H, OUT, F, V, B, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    vmask = v < V
    acc = tl.zeros((BLOCK_V,), dtype=tl.float32)
    for f in range(F):
        h = tl.load(H + row * F + f)
        idx = tl.maximum(h, 0) + v  # an absent feature (h = -1) reads window 0 and adds nothing
        idx = tl.where(idx >= B, idx - B, idx)  # V <= B: a window wraps at most once
        w = tl.load(THETA + idx, mask=vmask, other=0.0).to(tl.float32)
        acc += tl.where(h >= 0, w, 0.0)
    tl.store(OUT + row * V + v, acc.to(OUT.dtype.element_ty), mask=vmask)


@triton.jit
def _bwd_kernel(G, STARTS, ROWS, LO, HI, GRAD_THETA, V, B, BLOCK_B: tl.constexpr):
    block = tl.program_id(0)
    b = block.to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    acc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    lo = tl.load(LO + block)
    hi = tl.load(HI + block)
    for i in range(lo, hi):
        start = tl.load(STARTS + i)
        row = tl.load(ROWS + i)
        offset = b - start
        mask = (offset >= 0) & (offset < V) & (b < B)
        acc += tl.load(G + row * V + offset, mask=mask, other=0.0).to(tl.float32)
    tl.store(GRAD_THETA + b, acc, mask=b < B)


def hashed_window_sum_fwd(theta: torch.Tensor, hashes: torch.Tensor, vocab_size: int) -> torch.Tensor:
    theta, hashes = theta.contiguous(), hashes.contiguous()
    rows, features = hashes.shape
    out = torch.empty(rows, vocab_size, dtype=theta.dtype, device=theta.device)
    if out.numel() == 0:
        return out
    block_v = min(1024, triton.next_power_of_2(vocab_size))
    _fwd_kernel[(rows, triton.cdiv(vocab_size, block_v))](theta, hashes, out, features, vocab_size, theta.shape[0],
                                                          BLOCK_V=block_v)
    return out


def _sorted_windows(hashes: torch.Tensor, vocab_size: int, num_buckets: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(window starts, their rows), sorted by start (stable); a window that wraps past the last bucket
    appears a second time at start - B, covering buckets 0 ..."""
    rows = torch.arange(hashes.shape[0], device=hashes.device).repeat_interleave(hashes.shape[1])
    starts = hashes.flatten()
    present = starts >= 0
    starts, rows = starts[present], rows[present]
    wraps = starts + vocab_size > num_buckets
    starts = torch.cat([starts, starts[wraps] - num_buckets])
    rows = torch.cat([rows, rows[wraps]])
    starts, order = torch.sort(starts, stable=True)
    return starts.contiguous(), rows[order].contiguous()


def hashed_window_sum_bwd(grad_out: torch.Tensor, hashes: torch.Tensor, num_buckets: int) -> torch.Tensor:
    grad_out = grad_out.contiguous()
    vocab_size = grad_out.shape[1]
    grad_theta = torch.empty(num_buckets, dtype=torch.float32, device=grad_out.device)
    block_b = 1024
    starts, rows = _sorted_windows(hashes, vocab_size, num_buckets)
    block_starts = torch.arange(0, num_buckets, block_b, device=grad_out.device)
    lo = torch.searchsorted(starts, block_starts - vocab_size + 1)   # the first window ending after the block start
    hi = torch.searchsorted(starts, block_starts + block_b)          # past the last window starting in the block
    _bwd_kernel[(block_starts.shape[0],)](grad_out, starts, rows, lo, hi, grad_theta, vocab_size, num_buckets,
                                          BLOCK_B=block_b)
    return grad_theta
