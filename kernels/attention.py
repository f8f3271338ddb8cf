"""FlashAttention-2 forward and backward in Triton (CUDA tensors; TRITON_INTERPRET=1 in tests).

Layout (batch, seqlen, heads, head_dim), or (total, heads, head_dim) with cu_seqlens (packed
sequences). GQA: q head h reads kv head h // (Hq // Hkv), without copying K/V. Masks are aligned
bottom-right: query i sees key j when i + off - left <= j <= i + off + right, off = Sk - Sq
(a side < 0 is unbounded; causal is right = 0). Blocks the mask hides entirely are skipped.

- forward: one program per (query block, batch * head); K/V blocks streamed with an online
  softmax in fp32 (exp2 with log2(e) folded into the scale); saves lse = logsumexp (natural log).
- backward: delta = rowsum(dO * O) - dlse (preprocess), then dK/dV with one program per
  (key block, batch * kv head) looping over the q heads of its group and the query blocks that see
  it, and dQ with one program per (query block, batch * head) looping over key blocks. Every
  output element is written by one program: deterministic, no atomics.
head_dim is padded to a power of two (>= 16) with masked loads, so 40/80/96/112 work.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453


def _configs(pairs):
    if os.environ.get("TRITON_INTERPRET") == "1":  # the interpreter: one small config, quick
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in pairs]


# Ampere (A100: 3-4 stages fit 164 KB of shared memory at D <= 128) and Hopper (H100/H200: larger
# tiles, more warps). Autotuning picks per (head_dim, mask) and is cached per shape key.
_FWD_CONFIGS = _configs([(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 4), (128, 32, 4, 4),
                         (64, 32, 4, 3), (128, 64, 8, 4), (64, 64, 4, 2)])
_BWD_CONFIGS = _configs([(64, 64, 4, 2), (64, 64, 8, 3), (128, 64, 8, 2), (64, 128, 8, 2), (32, 64, 4, 2),
                         (64, 32, 4, 3), (32, 32, 4, 2)])
_KEY = ["BLOCK_D", "HAS_LEFT", "HAS_RIGHT", "VARLEN", "GROUP"]


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr):
    # The Triton interpreter (3.9) computes bf16 x bf16 dots wrongly: there (tests) upcast to fp32.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _seq_bounds(CU, b, sq, sk, VARLEN: tl.constexpr):
    """(q_start, qlen, k_start, klen) of sequence b."""
    if VARLEN:
        start = tl.load(CU + b).to(tl.int64)
        length = (tl.load(CU + b + 1) - tl.load(CU + b)).to(tl.int32)
        return start, length, start, length
    else:
        return tl.zeros((), tl.int64), sq, tl.zeros((), tl.int64), sk


@triton.jit
def _visible(offs_m, offs_n, qlen, klen, window_left, window_right, HAS_LEFT: tl.constexpr,
             HAS_RIGHT: tl.constexpr):
    off = klen - qlen
    ok = (offs_n[None, :] < klen) & (offs_m[:, None] < qlen)
    if HAS_LEFT:
        ok = ok & (offs_n[None, :] >= offs_m[:, None] + off - window_left)
    if HAS_RIGHT:
        ok = ok & (offs_n[None, :] <= offs_m[:, None] + off + window_right)
    return ok


@triton.autotune(configs=_FWD_CONFIGS, key=_KEY)
@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, CU,
                stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                stride_vb, stride_vs, stride_vh, stride_ob, stride_os, stride_oh, stride_lb, stride_lh,
                sq, sk, n_heads, head_dim, qk_scale, window_left, window_right,
                UPCAST: tl.constexpr, GROUP: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                VARLEN: tl.constexpr,
                BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    g = h // GROUP
    q_start, qlen, k_start, klen = _seq_bounds(CU, b, sq, sk, VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 < qlen:
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < head_dim
        q_ptrs = Q + b * stride_qb + (q_start + offs_m[:, None]) * stride_qs + h * stride_qh + offs_d[None, :]
        q = tl.load(q_ptrs, mask=(offs_m[:, None] < qlen) & d_ok[None, :], other=0.0)
        k_base = K + b * stride_kb + k_start * stride_ks + g * stride_kh
        v_base = V + b * stride_vb + k_start * stride_vs + g * stride_vh

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        off = klen - qlen
        lo = 0
        hi = klen
        if HAS_LEFT:
            lo = tl.maximum(m0 + off - window_left, 0)
            lo = (lo // BLOCK_N) * BLOCK_N
        if HAS_RIGHT:
            hi = tl.minimum(m0 + BLOCK_M - 1 + off + window_right + 1, klen)
        for n0 in range(lo, hi, BLOCK_N):
            cols = n0 + offs_n
            kv_mask = (cols[:, None] < klen) & d_ok[None, :]
            k = tl.load(k_base + cols[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
            s = _dot(q, tl.trans(k), UPCAST) * qk_scale  # log2 units
            s = tl.where(_visible(offs_m, cols, qlen, klen, window_left, window_right, HAS_LEFT, HAS_RIGHT), s,
                         float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.math.exp2(s - m_safe[:, None])
            alpha = tl.math.exp2(m_i - m_safe)
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, UPCAST)
            m_i = m_new
        seen = l_i > 0
        out = acc / tl.where(seen, l_i, 1.0)[:, None]
        o_ptrs = O + b * stride_ob + (q_start + offs_m[:, None]) * stride_os + h * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=(offs_m[:, None] < qlen) & d_ok[None, :])
        lse = tl.where(seen, (m_i + tl.math.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
        tl.store(LSE + b * stride_lb + h * stride_lh + q_start + offs_m, lse, mask=offs_m < qlen)


@triton.jit
def _bwd_preprocess(O, DO, LSE_GRAD, DELTA, CU, stride_ob, stride_os, stride_oh, stride_gb, stride_gs, stride_gh,
                    stride_lb, stride_lh, sq, n_heads, head_dim, HAS_LSE_GRAD: tl.constexpr,
                    VARLEN: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    q_start, qlen, _, _ = _seq_bounds(CU, b, sq, sq, VARLEN)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m[:, None] < qlen) & (offs_d[None, :] < head_dim)
    o = tl.load(O + b * stride_ob + (q_start + offs_m[:, None]) * stride_os + h * stride_oh + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_gb + (q_start + offs_m[:, None]) * stride_gs + h * stride_gh + offs_d[None, :],
                 mask=mask, other=0.0).to(tl.float32)
    delta = tl.sum(o * do, 1)
    rows = b * stride_lb + h * stride_lh + q_start + offs_m
    if HAS_LSE_GRAD:
        delta -= tl.load(LSE_GRAD + rows, mask=offs_m < qlen, other=0.0)
    tl.store(DELTA + rows, delta, mask=offs_m < qlen)


@triton.autotune(configs=_BWD_CONFIGS, key=_KEY)
@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, CU,
                     stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                     stride_vb, stride_vs, stride_vh, stride_gb, stride_gs, stride_gh,
                     stride_dkb, stride_dks, stride_dkh, stride_dvb, stride_dvs, stride_dvh, stride_lb, stride_lh,
                     sq, sk, n_kv_heads, head_dim, scale, qk_scale, window_left, window_right,
                     UPCAST: tl.constexpr, GROUP: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                     VARLEN: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bg = tl.program_id(1)
    b = pid_bg // n_kv_heads
    g = pid_bg % n_kv_heads
    q_start, qlen, k_start, klen = _seq_bounds(CU, b, sq, sk, VARLEN)
    n0 = pid_n * BLOCK_N
    if n0 < klen:
        offs_n = n0 + tl.arange(0, BLOCK_N)
        offs_m = tl.arange(0, BLOCK_M)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < head_dim
        kv_mask = (offs_n[:, None] < klen) & d_ok[None, :]
        k = tl.load(K + b * stride_kb + (k_start + offs_n[:, None]) * stride_ks + g * stride_kh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        v = tl.load(V + b * stride_vb + (k_start + offs_n[:, None]) * stride_vs + g * stride_vh + offs_d[None, :],
                    mask=kv_mask, other=0.0)
        dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        off = klen - qlen
        lo = 0
        hi = qlen
        if HAS_RIGHT:  # queries before this block's first key - right see none of it
            lo = tl.maximum(n0 - off - window_right, 0)
            lo = (lo // BLOCK_M) * BLOCK_M
        if HAS_LEFT:
            hi = tl.minimum(n0 + BLOCK_N - 1 - off + window_left + 1, qlen)
        for hh in range(0, GROUP):
            h = g * GROUP + hh
            q_base = Q + b * stride_qb + q_start * stride_qs + h * stride_qh
            do_base = DO + b * stride_gb + q_start * stride_gs + h * stride_gh
            l_base = b * stride_lb + h * stride_lh + q_start
            for m0 in range(lo, hi, BLOCK_M):
                rows = m0 + offs_m
                q_mask = (rows[:, None] < qlen) & d_ok[None, :]
                q = tl.load(q_base + rows[:, None] * stride_qs + offs_d[None, :], mask=q_mask, other=0.0)
                do = tl.load(do_base + rows[:, None] * stride_gs + offs_d[None, :], mask=q_mask, other=0.0)
                lse = tl.load(LSE + l_base + rows, mask=rows < qlen, other=0.0)
                delta = tl.load(DELTA + l_base + rows, mask=rows < qlen, other=0.0)
                ok = _visible(rows, offs_n, qlen, klen, window_left, window_right, HAS_LEFT, HAS_RIGHT)
                ok = ok & (lse[:, None] != float("-inf"))
                s = _dot(q, tl.trans(k), UPCAST) * qk_scale
                p = tl.where(ok, tl.math.exp2(s - lse[:, None] * 1.4426950408889634), 0.0)
                dv += _dot(tl.trans(p.to(do.dtype)), do, UPCAST)
                dp = _dot(do, tl.trans(v), UPCAST)
                ds = p * (dp - delta[:, None])
                dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST)
        dk = dk * scale
        tl.store(DK + b * stride_dkb + (k_start + offs_n[:, None]) * stride_dks + g * stride_dkh + offs_d[None, :],
                 dk.to(DK.dtype.element_ty), mask=kv_mask)
        tl.store(DV + b * stride_dvb + (k_start + offs_n[:, None]) * stride_dvs + g * stride_dvh + offs_d[None, :],
                 dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=_BWD_CONFIGS, key=_KEY)
@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, CU,
                   stride_qb, stride_qs, stride_qh, stride_kb, stride_ks, stride_kh,
                   stride_vb, stride_vs, stride_vh, stride_gb, stride_gs, stride_gh,
                   stride_dqb, stride_dqs, stride_dqh, stride_lb, stride_lh,
                   sq, sk, n_heads, head_dim, scale, qk_scale, window_left, window_right,
                   UPCAST: tl.constexpr, GROUP: tl.constexpr, HAS_LEFT: tl.constexpr, HAS_RIGHT: tl.constexpr,
                   VARLEN: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // n_heads
    h = pid_bh % n_heads
    g = h // GROUP
    q_start, qlen, k_start, klen = _seq_bounds(CU, b, sq, sk, VARLEN)
    m0 = pid_m * BLOCK_M
    if m0 < qlen:
        offs_m = m0 + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < head_dim
        q_mask = (offs_m[:, None] < qlen) & d_ok[None, :]
        q = tl.load(Q + b * stride_qb + (q_start + offs_m[:, None]) * stride_qs + h * stride_qh + offs_d[None, :],
                    mask=q_mask, other=0.0)
        do = tl.load(DO + b * stride_gb + (q_start + offs_m[:, None]) * stride_gs + h * stride_gh + offs_d[None, :],
                     mask=q_mask, other=0.0)
        rows = b * stride_lb + h * stride_lh + q_start + offs_m
        lse = tl.load(LSE + rows, mask=offs_m < qlen, other=0.0)
        delta = tl.load(DELTA + rows, mask=offs_m < qlen, other=0.0)
        k_base = K + b * stride_kb + k_start * stride_ks + g * stride_kh
        v_base = V + b * stride_vb + k_start * stride_vs + g * stride_vh
        dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        off = klen - qlen
        lo = 0
        hi = klen
        if HAS_LEFT:
            lo = tl.maximum(m0 + off - window_left, 0)
            lo = (lo // BLOCK_N) * BLOCK_N
        if HAS_RIGHT:
            hi = tl.minimum(m0 + BLOCK_M - 1 + off + window_right + 1, klen)
        for n0 in range(lo, hi, BLOCK_N):
            cols = n0 + offs_n
            kv_mask = (cols[:, None] < klen) & d_ok[None, :]
            k = tl.load(k_base + cols[:, None] * stride_ks + offs_d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + cols[:, None] * stride_vs + offs_d[None, :], mask=kv_mask, other=0.0)
            ok = _visible(offs_m, cols, qlen, klen, window_left, window_right, HAS_LEFT, HAS_RIGHT)
            ok = ok & (lse[:, None] != float("-inf"))
            s = _dot(q, tl.trans(k), UPCAST) * qk_scale
            p = tl.where(ok, tl.math.exp2(s - lse[:, None] * 1.4426950408889634), 0.0)
            dp = _dot(do, tl.trans(v), UPCAST)
            ds = p * (dp - delta[:, None])
            dq += _dot(ds.to(k.dtype), k, UPCAST)
        dq = dq * scale
        tl.store(DQ + b * stride_dqb + (q_start + offs_m[:, None]) * stride_dqs + h * stride_dqh + offs_d[None, :],
                 dq.to(DQ.dtype.element_ty), mask=q_mask)


# ---------------------------------------------------------------- launchers (the op signatures)


def _strides(t: torch.Tensor, varlen: bool):
    """(batch, seq, head) strides; head_dim must have unit stride."""
    return (0, t.stride(0), t.stride(1)) if varlen else (t.stride(0), t.stride(1), t.stride(2))


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _problem(q, k, cu_seqlens, max_seqlen):
    varlen = cu_seqlens is not None
    hq, hkv, d = q.shape[-2], k.shape[-2], q.shape[-1]
    if varlen:
        n_seqs = cu_seqlens.shape[0] - 1
        if max_seqlen <= 0:
            max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max().item()) if n_seqs > 0 else 0
        sq = sk = max_seqlen
        lse_strides = (0, q.shape[0])  # lse (H, total)
    else:
        n_seqs, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        lse_strides = (hq * sq, sq)  # lse (B, H, Sq)
    return varlen, n_seqs, sq, sk, hq, hkv, d, lse_strides


def _flags(window_left: int, window_right: int, block_d: int, varlen: bool, group: int, dtype: torch.dtype):
    upcast = dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1"
    return dict(UPCAST=upcast, GROUP=group, HAS_LEFT=window_left >= 0, HAS_RIGHT=window_right >= 0, VARLEN=varlen,
                BLOCK_D=block_d)


def attention_fwd(q, k, v, cu_seqlens, max_seqlen: int, softmax_scale: float, window_left: int, window_right: int):
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    varlen, n_seqs, sq, sk, hq, hkv, d, (slb, slh) = _problem(q, k, cu_seqlens, max_seqlen)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((hq, q.shape[0]) if varlen else (q.shape[0], hq, q.shape[1]), dtype=torch.float32,
                      device=q.device)
    if q.numel() == 0:
        return out, lse
    cu = cu_seqlens if varlen else out  # an unused pointer when dense
    block_d = max(16, triton.next_power_of_2(d))
    grid = lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), n_seqs * hq)  # noqa: E731
    _fwd_kernel[grid](q, k, v, out, lse, cu, *_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen),
                      *_strides(out, varlen), slb, slh, sq, sk, hq, d, softmax_scale * LOG2E,
                      max(window_left, 0), max(window_right, 0),
                      **_flags(window_left, window_right, block_d, varlen, hq // hkv, q.dtype))
    return out, lse


def attention_bwd(grad_out, q, k, v, out, lse, grad_lse, cu_seqlens, max_seqlen: int, softmax_scale: float,
                  window_left: int, window_right: int):
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    grad_out, out = _unit_last(grad_out.to(q.dtype)), _unit_last(out)
    lse = lse.contiguous()
    varlen, n_seqs, sq, sk, hq, hkv, d, (slb, slh) = _problem(q, k, cu_seqlens, max_seqlen)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    if q.numel() == 0 or k.numel() == 0:
        return dq.zero_(), dk.zero_(), dv.zero_()
    cu = cu_seqlens if varlen else lse
    block_d = max(16, triton.next_power_of_2(d))
    delta = torch.empty_like(lse)
    glse = grad_lse.contiguous() if grad_lse is not None else lse
    pre_block = 16 if os.environ.get("TRITON_INTERPRET") == "1" else 64
    _bwd_preprocess[(triton.cdiv(sq, pre_block), n_seqs * hq)](
        out, grad_out, glse, delta, cu, *_strides(out, varlen), *_strides(grad_out, varlen), slb, slh, sq, hq, d,
        HAS_LSE_GRAD=grad_lse is not None, VARLEN=varlen, BLOCK_D=block_d, BLOCK_M=pre_block)
    flags = _flags(window_left, window_right, block_d, varlen, hq // hkv, q.dtype)
    common = (*_strides(q, varlen), *_strides(k, varlen), *_strides(v, varlen), *_strides(grad_out, varlen))
    wl, wr = max(window_left, 0), max(window_right, 0)
    _bwd_dkdv_kernel[lambda meta: (triton.cdiv(sk, meta["BLOCK_N"]), n_seqs * hkv)](
        q, k, v, grad_out, lse, delta, dk, dv, cu, *common, *_strides(dk, varlen), *_strides(dv, varlen), slb, slh,
        sq, sk, hkv, d, softmax_scale, softmax_scale * LOG2E, wl, wr, **flags)
    _bwd_dq_kernel[lambda meta: (triton.cdiv(sq, meta["BLOCK_M"]), n_seqs * hq)](
        q, k, v, grad_out, lse, delta, dq, cu, *common, *_strides(dq, varlen), slb, slh,
        sq, sk, hq, d, softmax_scale, softmax_scale * LOG2E, wl, wr, **flags)
    return dq, dk, dv
