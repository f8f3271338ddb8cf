"""cast_scale in Triton: out = scale * x in out's dtype (fp32 math), one pass over memory."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _cast_scale_kernel(X, Y, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    y = x * scale
    if Y.dtype.element_ty != tl.float32:
        y = y.to(Y.dtype.element_ty, fp_downcast_rounding="rtne")  # round to nearest even, as torch
    tl.store(Y + offs, y, mask=mask)


def cast_scale_(out: torch.Tensor, x: torch.Tensor, scale: float) -> None:
    n = x.numel()
    if n == 0:
        return
    _cast_scale_kernel[(triton.cdiv(n, BLOCK),)](x, out, n, float(scale), BLOCK=BLOCK)
