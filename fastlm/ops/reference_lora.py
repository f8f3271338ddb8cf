"""Plain-torch reference of the LoRA matmul: out = x W^T + bias + scale (lora_x A^T) B^T, computed in
fp32 (fp64 for fp64 inputs) and rounded once to x's dtype. Differentiable by torch autograd; the
oracle of the tests and the path of FASTLM_BACKEND=reference."""
from __future__ import annotations

import torch


def lora_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scale: float, lora_x: torch.Tensor | None = None) -> torch.Tensor:
    """x (M, K), weight (N, K), bias (N,) or None, lora_a (r, K), lora_b (N, r); lora_x: the adapter's
    input (x after dropout), x when None. Returns (M, N) in x's dtype."""
    ct = torch.float64 if x.dtype == torch.float64 else torch.float32
    lx = x if lora_x is None else lora_x
    out = x.to(ct) @ weight.to(ct).t() + scale * ((lx.to(ct) @ lora_a.to(ct).t()) @ lora_b.to(ct).t())
    if bias is not None:
        out = out + bias.to(ct)
    return out.to(x.dtype)
