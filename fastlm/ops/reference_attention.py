"""Plain-PyTorch attention: the oracle of the fused kernels (it materializes the S x S scores).

Layout (batch, seqlen, heads, head_dim), or (total, heads, head_dim) with cu_seqlens (packed
documents, no attention across them). K/V may have fewer heads than Q (GQA: q head h reads kv head
h // (Hq // Hkv)). Masks are aligned bottom-right: query i of Sq sits at key position
i + Sk - Sq, and sees key j when i + Sk - Sq - window_left <= j <= i + Sk - Sq + window_right
(a negative window side is unbounded; causal is window_right = 0). A query that sees no key at
all gets output 0 and logsumexp -inf.

`attention_fwd` / `attention_bwd` have the signatures of the torch.library ops
(fastlm/ops/attention.py); `attention` is the differentiable reference the tests use, in any
compute dtype (float64 for the oracle, the input dtype for "the same math in plain torch").
"""
from __future__ import annotations

import torch


def visible_mask(sq: int, sk: int, window_left: int, window_right: int, device=None) -> torch.Tensor:
    """(sq, sk) bool: which keys each query sees (bottom-right aligned)."""
    i = torch.arange(sq, device=device)[:, None] + (sk - sq)
    j = torch.arange(sk, device=device)[None, :]
    mask = torch.ones(sq, sk, dtype=torch.bool, device=device)
    if window_left >= 0:
        mask &= j >= i - window_left
    if window_right >= 0:
        mask &= j <= i + window_right
    return mask


def _dense(q, k, v, scale: float, window_left: int, window_right: int, dtype: torch.dtype):
    """q (B, Sq, H, D), k/v (B, Sk, Hkv, D) -> out (B, Sq, H, D) and lse (B, H, Sq), both in `dtype`."""
    group = q.shape[2] // k.shape[2]
    qf = q.to(dtype).transpose(1, 2)
    kf = k.to(dtype).transpose(1, 2).repeat_interleave(group, dim=1)
    vf = v.to(dtype).transpose(1, 2).repeat_interleave(group, dim=1)
    s = (qf @ kf.transpose(-1, -2)) * scale
    mask = visible_mask(q.shape[1], k.shape[1], window_left, window_right, q.device)
    s = s.masked_fill(~mask, float("-inf"))
    # Softmax with a detached row max (exact: the shift cancels) that stays finite for rows that
    # see nothing, so those rows give 0 and zero gradients instead of NaN.
    m = s.amax(-1, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    l = e.sum(-1, keepdim=True)
    out = (e @ vf) / torch.where(l > 0, l, torch.ones_like(l))
    lse = (m + torch.log(l)).squeeze(-1)
    return out.transpose(1, 2), lse


def _bounds(cu_seqlens) -> list[tuple[int, int]]:
    cu = [int(c) for c in cu_seqlens.tolist()]
    return list(zip(cu[:-1], cu[1:]))


def attention(q, k, v, *, causal: bool = False, softmax_scale: float | None = None, window=None,
              cu_seqlens=None, compute_dtype: torch.dtype | None = None):
    """Differentiable reference attention. Returns (out, lse) in compute_dtype.

    compute_dtype=None: fp32 (fp64 for fp64 inputs). lse is (B, H, Sq), or (H, total) with cu_seqlens.
    """
    dtype = compute_dtype or torch.promote_types(q.dtype, torch.float32)
    scale = softmax_scale if softmax_scale is not None else q.shape[-1] ** -0.5
    left, right = (-1, -1) if window is None else (int(window[0]), int(window[1]))
    if causal:
        right = 0 if right < 0 else min(right, 0)
    if cu_seqlens is None:
        return _dense(q, k, v, scale, left, right, dtype)
    outs, lses = [], []
    for start, end in _bounds(cu_seqlens):
        o, s = _dense(q[None, start:end], k[None, start:end], v[None, start:end], scale, left, right, dtype)
        outs.append(o[0])
        lses.append(s[0])
    return torch.cat(outs, 0), torch.cat(lses, -1)


# ---------------------------------------------------------------- the op signatures


def _accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


def attention_fwd(q, k, v, cu_seqlens, max_seqlen: int, softmax_scale: float, window_left: int,
                  window_right: int):
    """Returns (out in q's dtype, lse fp32 (B, H, Sq) or (H, total))."""
    del max_seqlen
    out, lse = attention(q, k, v, softmax_scale=softmax_scale, window=(window_left, window_right),
                         cu_seqlens=cu_seqlens, compute_dtype=_accumulation_dtype(q))
    return out.to(q.dtype), lse.to(torch.float32)


def _dense_bwd(g, q, k, v, out, lse, glse, scale, window_left, window_right, dtype):
    """Explicit FlashAttention backward formulas (not autograd): P = exp(S - lse), dV = P^T dO,
    dS = P * (dO V^T - (rowsum(dO * O) - dlse)), dQ = scale dS K, dK = scale dS^T Q."""
    group = q.shape[2] // k.shape[2]
    b, sk, hkv, d = k.shape
    qf, kf, vf = (t.to(dtype).transpose(1, 2) for t in (q, k, v))
    kf, vf = kf.repeat_interleave(group, 1), vf.repeat_interleave(group, 1)
    gf, of = g.to(dtype).transpose(1, 2), out.to(dtype).transpose(1, 2)
    lse = lse.to(dtype)
    s = (qf @ kf.transpose(-1, -2)) * scale
    mask = visible_mask(q.shape[1], sk, window_left, window_right, q.device)
    finite = torch.isfinite(lse)[..., None]
    p = torch.exp(s - torch.where(finite, lse[..., None], torch.zeros_like(lse[..., None])))
    p = p.masked_fill(~mask | ~finite, 0.0)
    delta = (gf * of).sum(-1, keepdim=True)
    if glse is not None:
        delta = delta - glse.to(dtype)[..., None]
    dv = p.transpose(-1, -2) @ gf
    ds = p * (gf @ vf.transpose(-1, -2) - delta)
    dq = (ds @ kf) * scale
    dk = (ds.transpose(-1, -2) @ qf) * scale
    dk = dk.view(b, hkv, group, sk, d).sum(2)
    dv = dv.view(b, hkv, group, sk, d).sum(2)
    return dq.transpose(1, 2), dk.transpose(1, 2), dv.transpose(1, 2)


def attention_bwd(grad_out, q, k, v, out, lse, grad_lse, cu_seqlens, max_seqlen: int, softmax_scale: float,
                  window_left: int, window_right: int):
    """Returns (grad_q, grad_k, grad_v) in the dtypes of q, k, v."""
    del max_seqlen
    dtype = _accumulation_dtype(q)
    if cu_seqlens is None:
        dq, dk, dv = _dense_bwd(grad_out, q, k, v, out, lse, grad_lse, softmax_scale, window_left, window_right,
                                dtype)
    else:
        parts = []
        for s, e in _bounds(cu_seqlens):
            glse = None if grad_lse is None else grad_lse[None, :, s:e]
            parts.append(_dense_bwd(grad_out[None, s:e], q[None, s:e], k[None, s:e], v[None, s:e],
                                    out[None, s:e], lse[None, :, s:e], glse, softmax_scale, window_left,
                                    window_right, dtype))
        if parts:
            dq, dk, dv = (torch.cat([p[i][0] for p in parts], 0) for i in range(3))
        else:
            dq, dk, dv = torch.zeros_like(q, dtype=dtype), torch.zeros_like(k, dtype=dtype), torch.zeros_like(v, dtype=dtype)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
