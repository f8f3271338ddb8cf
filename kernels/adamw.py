"""adamw_step_ in Triton: one launch per tensor, one pass over p, g, m, v (fp32 math).

Same element math as the C++ kernel (csrc/cpu/adamw_kernel.cpp) and torch's single-tensor AdamW;
bf16 parameters are stepped through their fp32 master and rewritten rounded to nearest even.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

BLOCK = 2048


@triton.jit
def _adamw_kernel(P, G, M, V, W, n, decay, neg_step, bc2_sqrt, w1, b2, w2, eps,
                  HAS_MASTER: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.load(M + offs, mask=mask, other=0.0)
    v = tl.load(V + offs, mask=mask, other=0.0)
    if HAS_MASTER:
        w = tl.load(W + offs, mask=mask, other=0.0)
    else:
        w = tl.load(P + offs, mask=mask, other=0.0)
    m = m + w1 * (g - m)
    v = v * b2 + w2 * g * g
    denom = tl.sqrt_rn(v) / bc2_sqrt + eps
    w = w * decay + neg_step * m / denom
    tl.store(M + offs, m, mask=mask)
    tl.store(V + offs, v, mask=mask)
    if HAS_MASTER:
        tl.store(W + offs, w, mask=mask)
        tl.store(P + offs, w.to(P.dtype.element_ty, fp_downcast_rounding="rtne"), mask=mask)
    else:
        tl.store(P + offs, w, mask=mask)


def adamw_step_(params, grads, exp_avgs, exp_avg_sqs, masters, steps, lr, beta1, beta2, eps, weight_decay) -> None:
    for p, g, m, v, master, step in zip(params, grads, exp_avgs, exp_avg_sqs, masters, steps):
        step.add_(1)
        step = step.item()
        n = p.numel()
        if n == 0:
            continue
        has_master = master.numel() > 0 or p.dtype != torch.float32
        bc1, bc2 = 1.0 - beta1 ** step, 1.0 - beta2 ** step
        _adamw_kernel[(triton.cdiv(n, BLOCK),)](
            p, g, m, v, master if has_master else m, n, 1.0 - lr * weight_decay, -lr / bc1, math.sqrt(bc2),
            1.0 - beta1, beta2, 1.0 - beta2, eps, HAS_MASTER=has_master, BLOCK=BLOCK)
