"""The watermark bias in Triton (fastlm.ops.watermark_bias on CUDA tensors): one program adds delta to
the green tokens of a block of one row's logits, hashing in uint32 (products wrap modulo 2^32)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _kernel(LOGITS, SEEDS, CODES, OUT, V, threshold, delta, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    v = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    mask = v < V
    seed = tl.load(SEEDS + row).to(tl.uint32)
    x = seed ^ tl.load(CODES + v, mask=mask, other=0).to(tl.uint32)
    x ^= x >> 16
    x *= 0x21F0AAAD
    x ^= x >> 15
    x *= 0x735A2D97
    x ^= x >> 15
    green = x.to(tl.int64) < threshold
    logits = tl.load(LOGITS + row * V + v, mask=mask, other=0.0).to(tl.float32)
    out = logits + tl.where(green, delta, 0.0)
    if OUT.dtype.element_ty != tl.float32:  # round to nearest, as torch's downcast does
        out = out.to(OUT.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(OUT + row * V + v, out, mask=mask)


def watermark_bias(logits: torch.Tensor, seeds: torch.Tensor, codes: torch.Tensor, threshold: int,
                   delta: float) -> torch.Tensor:
    logits, seeds, codes = logits.contiguous(), seeds.contiguous(), codes.contiguous()
    out = torch.empty_like(logits)
    rows, vocab = logits.shape
    if out.numel() == 0:
        return out
    block_v = min(1024, triton.next_power_of_2(vocab))
    _kernel[(rows, triton.cdiv(vocab, block_v))](logits, seeds, codes, out, vocab, threshold, delta, BLOCK_V=block_v)
    return out
