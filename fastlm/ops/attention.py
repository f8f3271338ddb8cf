"""Fused attention (FlashAttention-2 algorithm): exact, memory-linear in the sequence length.

    out = fastlm.ops.attention(q, k, v, causal=True)                # (B, S, H, D)
    out, lse = fastlm.ops.attention(q, k, v, return_lse=True)       # lse (B, H, Sq), fp32
    out = fastlm.ops.attention(q, k, v, causal=True, dropout_p=0.1) # torch SDPA (the kernels have no dropout)

CPU tensors run the C++ kernels (csrc/cpu/attention*.cpp), CUDA tensors the Triton ones
(kernels/attention.py), anything else (fp64, FASTLM_BACKEND=reference) the plain-torch reference
(fastlm/ops/reference_attention.py), whose docstring defines the masks. What the kernels do not do
(attention dropout, an explicit attn_mask, head sizes outside 8..256) runs torch SDPA with the same
masks (attention_sdpa.py). This is the only place that chooses.

On CPU, bf16 inputs run the AVX512-BF16 kernels (bf16 products, fp32 softmax and sums) where the CPU
has them, the fp32 kernels otherwise (and always for fp32 / fp16 inputs); FASTLM_ATTN_KERNEL=bf16|fp32
forces one, and torch.ops.fastlm.attention_cpu_kernel(dtype) says which runs
(benchmarks/attention_paths.py compares them with torch SDPA).
"""
from __future__ import annotations

import math
import numbers

import torch

from fastlm.ops import reference_attention as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import call_op, register_backward_op, register_op
from fastlm.ops.attention_sdpa import sdpa_attention

MIN_HEAD_DIM, MAX_HEAD_DIM = 8, 256

# ---------------------------------------------------------------- registration (see _library.py)


def _triton(name: str):
    def launcher():
        from fastlm.kernels import attention as triton_attention

        return getattr(triton_attention, name)

    return launcher


def _fake_fwd(q, k, v, cu_seqlens, max_seqlen, softmax_scale, window_left, window_right):
    if cu_seqlens is None:
        lse = q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)
    else:
        lse = q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)
    return q.new_empty(q.shape), lse


def _fake_bwd(grad_out, q, k, v, out, lse, grad_lse, cu_seqlens, max_seqlen, softmax_scale, window_left,
              window_right):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


register_op("attention_fwd", reference=reference.attention_fwd, triton=_triton("attention_fwd"),
            fake=_fake_fwd)
register_op("attention_bwd", reference=reference.attention_bwd, triton=_triton("attention_bwd"),
            fake=_fake_bwd)


def _setup(ctx, inputs, output):
    q, k, v, cu_seqlens, max_seqlen, scale, left, right = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens)
    ctx.params = (max_seqlen, scale, left, right)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, cu_seqlens = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(out)
    dq, dk, dv = torch.ops.fastlm.attention_bwd(grad_out, q, k, v, out, lse, grad_lse, cu_seqlens, *ctx.params)
    return dq, dk, dv, None, None, None, None, None


torch.library.register_autograd("fastlm::attention_fwd", _backward, setup_context=_setup)
register_backward_op("attention_bwd")

# ---------------------------------------------------------------- checks


def _window(causal: bool, window) -> tuple[int, int]:
    if not isinstance(causal, bool):
        raise TypeError(f"attention: causal must be True or False, got {causal!r}")
    if window is None:
        left, right = -1, -1
    else:
        if (not isinstance(window, (tuple, list)) or len(window) != 2
                or not all(isinstance(w, numbers.Integral) and not isinstance(w, bool) for w in window)):
            raise ValueError(f"attention: window must be a pair of integers (left, right), got {window!r}")
        left, right = int(window[0]), int(window[1])
        if left < -1 or right < -1:
            raise ValueError(f"attention: window sides must be >= 0 (or -1 for unbounded), got {window!r}")
    if causal:  # causal = no key to the right of the query
        right = 0
    return left, right


def _check_cu_seqlens(cu_seqlens, q, k, max_seqlen) -> int:
    if not isinstance(cu_seqlens, torch.Tensor):
        raise TypeError(f"attention: cu_seqlens must be a tensor, got {type(cu_seqlens).__name__}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"attention: cu_seqlens must be 1-D with at least 2 entries (0, ..., total), "
                         f"got shape {tuple(cu_seqlens.shape)}")
    if cu_seqlens.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"attention: cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
    if cu_seqlens.device != q.device:
        raise ValueError(f"attention: cu_seqlens is on {cu_seqlens.device} but q is on {q.device}")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"attention: with cu_seqlens q and k/v must have the same number of tokens, "
                         f"got {tuple(q.shape[:-2])} and {tuple(k.shape[:-2])}")
    if max_seqlen is not None and (not isinstance(max_seqlen, numbers.Integral) or isinstance(max_seqlen, bool)
                                   or max_seqlen < 0):
        raise ValueError(f"attention: max_seqlen must be a non-negative integer, got {max_seqlen!r}")
    if torch.compiler.is_compiling():  # values are unknown while tracing; the kernels check again
        return int(max_seqlen or 0)
    cu = cu_seqlens.tolist()
    total = q.shape[:-2].numel()
    if cu[0] != 0 or cu[-1] != total:
        raise ValueError(f"attention: cu_seqlens must start at 0 and end at the number of tokens ({total}), "
                         f"got {cu[0]} ... {cu[-1]}")
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    if min(lengths) < 0:
        raise ValueError(f"attention: cu_seqlens must be increasing, got {cu}")
    if q.dim() == 4 and not set(range(0, total, q.shape[1])) <= set(cu):
        raise ValueError(f"attention: with (batch, seqlen, ...) inputs every row must start a document "
                         f"(multiples of {q.shape[1]} in cu_seqlens), got {cu}")
    longest = max(lengths)
    if max_seqlen is not None and max_seqlen < longest:
        raise ValueError(f"attention: max_seqlen = {max_seqlen} is shorter than the longest sequence ({longest})")
    return int(max_seqlen) if max_seqlen is not None else longest


def _check(q, k, v, softmax_scale, cu_seqlens) -> float:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"attention: {name} must be floating point, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"attention: q, k and v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k and v must be on the same device, got {q.device}, {k.device}, {v.device}")
    # With cu_seqlens: packed (total_tokens, heads, head_dim), or rows of packed documents.
    ranks = (4,) if cu_seqlens is None else (3, 4)
    layout = ("(batch, seqlen, heads, head_dim)" if cu_seqlens is None
              else "(total_tokens, heads, head_dim) or (batch, seqlen, heads, head_dim) with cu_seqlens")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() not in ranks:
            hint = " (3-D packed inputs need cu_seqlens)" if cu_seqlens is None and t.dim() == 3 else ""
            raise ValueError(f"attention: {name} must be {'-D or '.join(map(str, ranks))}-D {layout}, "
                             f"got shape {tuple(t.shape)}{hint}")
    if q.dim() != k.dim():
        raise ValueError(f"attention: q and k/v must have the same rank, got {tuple(q.shape)} and {tuple(k.shape)}")
    if k.shape[:-1] != v.shape[:-1]:  # v may have a head size of its own (then torch SDPA runs)
        raise ValueError(f"attention: k and v must have the same shape but for head_dim, "
                         f"got {tuple(k.shape)} and {tuple(v.shape)}")
    if q.dim() == 4 and q.shape[0] != k.shape[0]:
        raise ValueError(f"attention: q and k/v batch sizes differ: {q.shape[0]} and {k.shape[0]}")
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"attention: q and k/v head_dim differ: {d} and {k.shape[-1]}")
    if d == 0:
        raise ValueError("attention: head_dim must be positive")
    hq, hkv = q.shape[-2], k.shape[-2]
    if hq == 0 or hkv == 0 or hq % hkv:
        raise ValueError(f"attention: q heads ({hq}) must be a positive multiple of k/v heads ({hkv})")
    if softmax_scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(softmax_scale, bool) or not isinstance(softmax_scale, numbers.Real) \
            or not math.isfinite(softmax_scale):
        raise ValueError(f"attention: softmax_scale must be a finite number, got {softmax_scale!r}")
    return float(softmax_scale)


# ---------------------------------------------------------------- the public function


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
              softmax_scale: float | None = None, window: tuple[int, int] | None = None,
              cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None, return_lse: bool = False,
              dropout_p: float = 0.0, attn_mask: torch.Tensor | None = None):
    """softmax(q k^T * softmax_scale + mask) v, without materializing the scores.

    q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D) with Hq a multiple of Hkv (GQA/MQA); v may have its own D.
    causal: query i sees keys j <= i + Sk - Sq (aligned bottom-right, as for decoding with a KV cache).
    window=(left, right): query i sees keys i' - left <= j <= i' + right, i' = i + Sk - Sq (-1: unbounded).
    cu_seqlens: (n + 1,) int32/int64 offsets of n packed sequences; q, k, v are then (total, heads, D),
    or (B, T, heads, D) with offsets into the flattened B * T tokens (every row starting a sequence),
    and no token attends across sequences. max_seqlen: the longest of them (computed when omitted).
    softmax_scale defaults to 1/sqrt(D). dropout_p: attention dropout (pass 0 in eval). attn_mask: an
    extra mask as torch SDPA takes it (bool, True = attend, or additive), broadcastable to (B, Hq, Sq, Sk).
    Returns out (like q), and with return_lse=True also the logsumexp of the scaled scores, fp32,
    (B, Hq, Sq) or (Hq, total) with cu_seqlens (-inf for a query that sees no key; its output is 0).

    The fused kernels run when 8 <= D <= 256 (the same for v), dropout_p = 0 and attn_mask is None;
    torch SDPA with the same masks otherwise (no lse there).
    """
    scale = _check(q, k, v, softmax_scale, cu_seqlens)
    left, right = _window(causal, window)
    if not isinstance(return_lse, bool):
        raise TypeError(f"attention: return_lse must be True or False, got {return_lse!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real) or not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"attention: dropout_p must be a number in [0, 1), got {dropout_p!r}")
    if attn_mask is not None and not isinstance(attn_mask, torch.Tensor):
        raise TypeError(f"attention: attn_mask must be a tensor or None, got {type(attn_mask).__name__}")
    max_len = 0
    if cu_seqlens is not None:
        max_len = _check_cu_seqlens(cu_seqlens, q, k, max_seqlen)
    elif max_seqlen is not None:
        raise ValueError("attention: max_seqlen is only used with cu_seqlens")
    d = q.shape[-1]
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM or v.shape[-1] != d or dropout_p > 0 or attn_mask is not None:
        if return_lse:
            raise ValueError(f"attention: return_lse needs the fused kernels: head_dim must be between "
                             f"{MIN_HEAD_DIM} and {MAX_HEAD_DIM} (got {d}), the same for v, no dropout and "
                             f"no attn_mask")
        dense = cu_seqlens is None or q.dim() == 4
        qd, kd, vd = (t if dense else t[None] for t in (q, k, v))
        out = sdpa_attention(qd, kd, vd, scale=scale, window_left=left, window_right=right, cu_seqlens=cu_seqlens,
                             dropout_p=float(dropout_p), attn_mask=attn_mask)
        return out if dense else out[0]
    rows = q.shape[:2] if cu_seqlens is not None and q.dim() == 4 else None
    if rows is not None:  # rows of packed documents: the kernels see the flattened tokens
        q, k, v = q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)
    if use_reference(q, k, v):
        out, lse = reference.attention(q, k, v, softmax_scale=scale, window=(left, right), cu_seqlens=cu_seqlens)
        out, lse = out.to(q.dtype), lse.to(torch.float32)
    else:
        out, lse = call_op(torch.ops.fastlm.attention_fwd, q, k, v, cu_seqlens, max_len, scale, left, right)
    if rows is not None:
        out = out.view(*rows, *out.shape[1:])
    return (out, lse) if return_lse else out
