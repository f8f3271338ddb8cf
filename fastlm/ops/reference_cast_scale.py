"""Plain-torch reference of cast_scale: out = scale * x (fp32 math) in out's dtype."""
from __future__ import annotations

import torch


def cast_scale_(out: torch.Tensor, x: torch.Tensor, scale: float) -> None:
    out.copy_((x.reshape(out.shape).to(torch.float32) * scale).to(out.dtype))
