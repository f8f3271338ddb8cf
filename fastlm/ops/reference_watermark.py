"""Plain-torch reference of the watermark bias (fastlm.ops.watermark_bias): the tests' oracle, the
kernel where the extension or Triton is missing, and the keyed hash fastlm.accountability.watermark
builds its green lists with.

mix32 is Wellons' lowbias32 avalanche mixer on 32-bit words held in int64 tensors; its multipliers
are below 2^31, so no product of a 32-bit word overflows int64 (the C++ and Triton kernels compute
it in uint32, where the products wrap modulo 2^32 to the same words)."""
from __future__ import annotations

import torch

MASK32 = 0xFFFFFFFF
M1, M2 = 0x21F0AAAD, 0x735A2D97


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 of int64 values in [0, 2^32) (a new tensor; x is not changed)."""
    x = x ^ (x >> 16)
    x.mul_(M1).bitwise_and_(MASK32)
    x.bitwise_xor_(x >> 15)
    x.mul_(M2).bitwise_and_(MASK32)
    x.bitwise_xor_(x >> 15)
    return x


def watermark_bias(logits: torch.Tensor, seeds: torch.Tensor, codes: torch.Tensor, threshold: int,
                   delta: float) -> torch.Tensor:
    """out[b, v] = logits[b, v] + delta where mix32(seeds[b] ^ codes[v]) < threshold (fp32 math,
    logits' dtype; fp64 stays fp64). logits (B, V) float, seeds (B,) and codes (V,) int64 in [0, 2^32)."""
    green = mix32(seeds[:, None] ^ codes[None, :]) < threshold
    math_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return (logits.to(math_dtype) + green.to(math_dtype) * delta).to(logits.dtype)
