"""Symmetric absmax int8 quantization in Triton, one program per (row, group): scale = absmax / 127,
q = round_half_even(x / scale) (IEEE division, as the reference) clamped to [-127, 127]."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_BLOCK = 4096


@triton.jit
def _quantize_kernel(X, Q, S, k, group_size, groups, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    group = tl.program_id(1)
    start = row * k + group * group_size
    offs = tl.arange(0, BLOCK)
    absmax = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(0, group_size, BLOCK):
        mask = i + offs < group_size
        x = tl.load(X + start + i + offs, mask=mask, other=0.0).to(tl.float32)
        absmax = tl.maximum(absmax, tl.abs(x))
    amax = tl.max(absmax, axis=0)
    # all-zero group: 1; else at least FLT_MIN (absmax / 127 may underflow)
    scale = tl.where(amax > 0.0, tl.maximum(amax / 127.0, 1.1754943508222875e-38), 1.0)
    tl.store(S + row * groups + group, scale)
    for i in range(0, group_size, BLOCK):
        mask = i + offs < group_size
        x = tl.load(X + start + i + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.math.div_rn(x, tl.zeros_like(x) + scale)
        v = (v + 12582912.0) - 12582912.0  # round half to even (|v| <= 127.x)
        v = tl.minimum(tl.maximum(v, -127.0), 127.0)
        tl.store(Q + start + i + offs, v.to(tl.int8), mask=mask)


def int8_quantize(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (R, K) contiguous float -> (q (R, K) int8, scale (R, K // group_size) fp32)."""
    x = x.contiguous()
    rows, k = x.shape
    groups = k // group_size
    q = torch.empty((rows, k), dtype=torch.int8, device=x.device)
    scale = torch.empty((rows, groups), dtype=torch.float32, device=x.device)
    if rows == 0 or k == 0:
        return q, scale
    block = min(MAX_BLOCK, triton.next_power_of_2(group_size))
    _quantize_kernel[(rows, groups)](x, q, scale, k, group_size, groups, BLOCK=block,
                                     num_warps=4 if block >= 1024 else 1)
    return q, scale
