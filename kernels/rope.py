"""Rotary position embedding in Triton: one program rotates the H head vectors of one (batch, token)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _rope_kernel(X, COS, SIN, OUT, T, H, HALF, sxb, sxt, sxh, sob, sot, soh, cos_bstride, sign,
                 BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    b = pid // T
    t = pid % T
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    angle = b * cos_bstride + t * HALF + d
    c = tl.load(COS + angle, mask=dmask, other=0.0).to(tl.float32)
    s = sign * tl.load(SIN + angle, mask=dmask, other=0.0).to(tl.float32)
    for h0 in range(0, H, BLOCK_H):
        h = h0 + tl.arange(0, BLOCK_H)
        mask = (h[:, None] < H) & dmask[None, :]
        xrow = X + b * sxb + t * sxt + h[:, None] * sxh + d[None, :]
        x1 = tl.load(xrow, mask=mask, other=0.0).to(tl.float32)
        x2 = tl.load(xrow + HALF, mask=mask, other=0.0).to(tl.float32)
        orow = OUT + b * sob + t * sot + h[:, None] * soh + d[None, :]
        tl.store(orow, (x1 * c[None, :] - x2 * s[None, :]).to(OUT.dtype.element_ty), mask=mask)
        tl.store(orow + HALF, (x2 * c[None, :] + x1 * s[None, :]).to(OUT.dtype.element_ty), mask=mask)


def rope_fwd(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    out = torch.empty_like(x)
    if out.stride(-1) != 1:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    b, t, h, d = x.shape
    half = d // 2
    cos = cos.to(torch.float32).contiguous()
    sin = sin.to(torch.float32).contiguous()
    if x.numel() == 0:
        return out
    block_d = triton.next_power_of_2(half)
    block_h = max(1, min(triton.next_power_of_2(h), 4096 // block_d))
    _rope_kernel[(b * t,)](x, cos, sin, out, t, h, half, x.stride(0), x.stride(1), x.stride(2), out.stride(0),
                           out.stride(1), out.stride(2), t * half if cos.dim() == 3 else 0, -1.0 if inverse else 1.0,
                           BLOCK_H=block_h, BLOCK_D=block_d)
    return out
