"""Distillation losses of one chunk of rows in Triton (fastlm.ops.linear_distill_loss's row kernel on
CUDA): one program per row, streaming the vocabulary in blocks, fp32 math on fp32/bf16/fp16 logits.
Definitions and gradient formulas: fastlm/ops/reference_distill.py (distill_loss)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastlm.ops.reference_distill import effective_loss

BLOCK = 2048
TOPK_BLOCK = 512  # the top-k kernel compares each block with the k ids: BLOCK x k booleans


@triton.jit
def _online(m, s, x):
    """One step of a streaming logsumexp (m, s) over the block x (-inf entries count for nothing)."""
    new_m = tl.maximum(m, tl.max(x, axis=0))
    old = tl.where(m == -float("inf"), 0.0, s * tl.exp(m - new_m))
    block = tl.where(new_m == -float("inf"), 0.0, tl.sum(tl.exp(x - new_m), axis=0))
    return new_m, old + block


@triton.jit
def _full_kernel(S, T, G, LOSS, DS, V, ss, st, beta, inv_t, temperature, LOSS_KIND: tl.constexpr,
                 COMPUTE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    mq = -float("inf")
    sq = 0.0
    mp = -float("inf")
    sp = 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        a = tl.load(S + row * ss + cols, mask=mask, other=-float("inf")).to(tl.float32) * inv_t
        b = tl.load(T + row * st + cols, mask=mask, other=-float("inf")).to(tl.float32) * inv_t
        mq, sq = _online(mq, sq, a)
        mp, sp = _online(mp, sp, b)
    lse_q = mq + tl.log(sq)
    lse_p = mp + tl.log(sp)
    c = 1.0 - beta
    total = 0.0
    qh = 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        lq = tl.load(S + row * ss + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_q
        lp = tl.load(T + row * st + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_p
        q = tl.where(mask, tl.exp(lq), 0.0)
        p = tl.where(mask, tl.exp(lp), 0.0)
        if LOSS_KIND == 0:
            total += tl.sum(tl.where(p > 0, p * (lp - lq), 0.0), axis=0)
        elif LOSS_KIND == 1:
            total += tl.sum(tl.where(q > 0, q * (lq - lp), 0.0), axis=0)
        else:
            lm = tl.log(tl.where(mask, beta * p + c * q, 1.0))  # (masked lanes: no log 0)
            total += tl.sum(tl.where(p > 0, beta * p * (lp - lm), 0.0) + tl.where(q > 0, c * q * (lq - lm), 0.0),
                            axis=0)
            qh += tl.sum(tl.where(q > 0, q * (lq - lm), 0.0), axis=0)
    tl.store(LOSS + row, total * temperature * temperature)
    if COMPUTE_GRAD:
        gs = tl.load(G + row).to(tl.float32) * temperature
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < V
            lq = tl.load(S + row * ss + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_q
            lp = tl.load(T + row * st + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_p
            q = tl.exp(lq)
            if LOSS_KIND == 0:
                d = q - tl.exp(lp)
            elif LOSS_KIND == 1:
                d = q * (lq - lp - total)
            else:
                lm = tl.log(tl.where(mask, beta * tl.exp(lp) + c * q, 1.0))
                d = q * c * ((lq - lm) - qh)
            tl.store(DS + row * V + cols, (gs * d).to(DS.dtype.element_ty), mask=mask)


@triton.jit
def _topk_kernel(S, LP, IDX, G, LOSS, DS, V, ss, K, beta, inv_t, temperature, LOSS_KIND: tl.constexpr,
                 COMPUTE_GRAD: tl.constexpr, BLOCK: tl.constexpr, KB: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    kb = tl.arange(0, KB)
    kmask = kb < K
    idx = tl.load(IDX + row * K + kb, mask=kmask, other=-1)
    mq = -float("inf")
    sq = 0.0
    mt = -float("inf")
    st = 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        a = tl.load(S + row * ss + cols, mask=cols < V, other=-float("inf")).to(tl.float32) * inv_t
        hit = tl.sum((cols[:, None] == idx[None, :]).to(tl.int32), axis=1) > 0
        mq, sq = _online(mq, sq, a)
        mt, st = _online(mt, st, tl.where(hit, -float("inf"), a))  # the tail: without the teacher's top-k
    lse_q = mq + tl.log(sq)
    lq_t = mt + tl.log(st) - lse_q
    lq = tl.load(S + row * ss + idx, mask=kmask, other=0.0).to(tl.float32) * inv_t - lse_q
    lp = tl.load(LP + row * (K + 1) + kb, mask=kmask, other=0.0)
    lp_t = tl.load(LP + row * (K + 1) + K)
    q = tl.where(kmask, tl.exp(lq), 0.0)
    p = tl.where(kmask, tl.exp(lp), 0.0)
    q_t = tl.exp(lq_t)
    p_t = tl.exp(lp_t)
    c = 1.0 - beta
    if LOSS_KIND == 0:
        total = tl.sum(tl.where(p > 0, p * (lp - lq), 0.0), axis=0) + tl.where(p_t > 0, p_t * (lp_t - lq_t), 0.0)
        u = tl.where(kmask, 1.0, 0.0)
        w = p
        u_t = 1.0
        w_t = p_t
    elif LOSS_KIND == 1:
        total = tl.sum(tl.where(q > 0, q * (lq - lp), 0.0), axis=0) + tl.where(q_t > 0, q_t * (lq_t - lp_t), 0.0)
        u = lq - lp - total
        w = tl.zeros([KB], dtype=tl.float32)
        u_t = lq_t - lp_t - total
        w_t = 0.0
    else:
        lm = tl.log(tl.where(kmask, beta * p + c * q, 1.0))
        lm_t = tl.log(beta * p_t + c * q_t)
        total = tl.sum(tl.where(p > 0, beta * p * (lp - lm), 0.0) + tl.where(q > 0, c * q * (lq - lm), 0.0), axis=0)
        total += tl.where(p_t > 0, beta * p_t * (lp_t - lm_t), 0.0) + tl.where(q_t > 0, c * q_t * (lq_t - lm_t), 0.0)
        h = tl.where(kmask, c * (lq - lm), 0.0)
        h_t = c * (lq_t - lm_t)
        qh = tl.sum(q * h, axis=0) + q_t * h_t
        u = h - qh
        w = tl.zeros([KB], dtype=tl.float32)
        u_t = h_t - qh
        w_t = 0.0
    tl.store(LOSS + row, total * temperature * temperature)
    if COMPUTE_GRAD:
        gs = tl.load(G + row).to(tl.float32) * temperature
        for start in range(0, V, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            mask = cols < V
            lqv = tl.load(S + row * ss + cols, mask=mask, other=0.0).to(tl.float32) * inv_t - lse_q
            qv = tl.exp(lqv)
            eq = cols[:, None] == idx[None, :]
            hit = tl.sum(eq.to(tl.int32), axis=1) > 0
            u_sel = tl.sum(tl.where(eq, u[None, :], 0.0), axis=1)
            w_sel = tl.sum(tl.where(eq, w[None, :], 0.0), axis=1)
            d = tl.where(hit, qv * u_sel - w_sel, qv * u_t - w_t * tl.exp(lqv - lq_t))
            tl.store(DS + row * V + cols, (gs * d).to(DS.dtype.element_ty), mask=mask)


def distill_loss(student_logits, teacher, teacher_index, row_grad, loss: int, beta: float, temperature: float,
                 compute_grad: bool):
    s = student_logits if student_logits.stride(-1) == 1 else student_logits.contiguous()
    n, v = s.shape
    kind = effective_loss(loss, beta)
    out = torch.empty(n, dtype=torch.float32, device=s.device)
    grad = torch.empty((n, v) if compute_grad else (0,), dtype=s.dtype, device=s.device)
    g = row_grad.to(torch.float32).contiguous()
    if not n:
        return out, grad
    if teacher_index is None:
        t = teacher if teacher.stride(-1) == 1 else teacher.contiguous()
        _full_kernel[(n,)](s, t, g, out, grad, v, s.stride(0), t.stride(0), float(beta), 1.0 / temperature,
                           float(temperature), LOSS_KIND=kind, COMPUTE_GRAD=bool(compute_grad),
                           BLOCK=min(BLOCK, triton.next_power_of_2(v)))
    else:
        idx = teacher_index.to(torch.int64).contiguous()
        lp = teacher.to(torch.float32).contiguous()
        k = idx.shape[1]
        _topk_kernel[(n,)](s, lp, idx, g, out, grad, v, s.stride(0), k, float(beta), 1.0 / temperature,
                           float(temperature), LOSS_KIND=kind, COMPUTE_GRAD=bool(compute_grad),
                           BLOCK=min(TOPK_BLOCK, triton.next_power_of_2(v)), KB=max(2, triton.next_power_of_2(k)))
    return out, grad
