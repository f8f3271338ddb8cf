"""Cross-entropy (ignore_index, label smoothing, z-loss) in Triton: one program per row of logits,
streaming the vocabulary in blocks (online logsumexp), fp32 math on fp32/bf16/fp16 logits."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _fwd_kernel(X, LABELS, LOSS, LSE, V, sx, ignore_index, smoothing, z_loss, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(LABELS + row)
    m = -float("inf")
    s = 0.0
    total = 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(X + row * sx + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        new_m = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - new_m) + tl.sum(tl.exp(x - new_m), axis=0)
        total += tl.sum(tl.where(cols < V, x, 0.0), axis=0)
        m = new_m
    lse = m + tl.log(s)
    tl.store(LSE + row, lse)
    ignored = label == ignore_index
    target = tl.load(X + row * sx + tl.where(ignored, 0, label)).to(tl.float32)
    loss = lse - (1.0 - smoothing) * target - smoothing * (total / V) + z_loss * lse * lse
    tl.store(LOSS + row, tl.where(ignored, 0.0, loss))


@triton.jit
def _bwd_kernel(GRAD, X, LABELS, LSE, DX, V, sx, ignore_index, smoothing, z_loss, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(LABELS + row)
    g = tl.load(GRAD + row).to(tl.float32)
    g = tl.where(label == ignore_index, 0.0, g)
    lse = tl.load(LSE + row)
    scale = g * (1.0 + 2.0 * z_loss * lse)
    shift = g * smoothing / V
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(X + row * sx + cols, mask=mask, other=0.0).to(tl.float32)
        dx = scale * tl.exp(x - lse) - shift - tl.where(cols == label, g * (1.0 - smoothing), 0.0)
        tl.store(DX + row * V + cols, dx.to(DX.dtype.element_ty), mask=mask)


def _prepare(logits: torch.Tensor, labels: torch.Tensor):
    x = logits if logits.stride(-1) == 1 else logits.contiguous()
    return x, labels.to(torch.int64).contiguous()


def cross_entropy_fwd(logits, labels, ignore_index: int, label_smoothing: float, z_loss: float):
    x, lab = _prepare(logits, labels)
    n, v = x.shape
    loss = torch.empty(n, dtype=torch.float32, device=x.device)
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    if n:
        _fwd_kernel[(n,)](x, lab, loss, lse, v, x.stride(0), ignore_index, label_smoothing, z_loss,
                          BLOCK=min(BLOCK, triton.next_power_of_2(v)))
    return loss, lse


def cross_entropy_bwd(grad_loss, logits, labels, lse, ignore_index: int, label_smoothing: float, z_loss: float):
    x, lab = _prepare(logits, labels)
    n, v = x.shape
    dx = torch.empty((n, v), dtype=x.dtype, device=x.device)
    if n:
        _bwd_kernel[(n,)](grad_loss.to(torch.float32).contiguous(), x, lab, lse.contiguous(), dx, v, x.stride(0),
                          ignore_index, label_smoothing, z_loss, BLOCK=min(BLOCK, triton.next_power_of_2(v)))
    return dx
