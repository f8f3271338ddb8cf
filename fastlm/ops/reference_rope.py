"""Plain-torch reference of rope: the rotation in fp32, one rounding at the end.

x (B, T, H, D), cos/sin (T, D/2) or (B, T, D/2); out1 = x1 cos - x2 sin, out2 = x2 cos + x1 sin
(x1, x2 the halves of the head dim). inverse=True rotates back (sin -> -sin): the backward.
"""
from __future__ import annotations

import torch


def rope_fwd(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, inverse: bool) -> torch.Tensor:
    h = x.shape[-1] // 2
    dtype = torch.promote_types(x.dtype, torch.float32)  # fp32 math (fp64 stays fp64)
    xf = x.to(dtype)
    c = cos.to(dtype)
    s = sin.to(dtype)
    if inverse:
        s = -s
    c, s = c.unsqueeze(-2), s.unsqueeze(-2)  # broadcast over heads
    x1, x2 = xf[..., :h], xf[..., h:]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
