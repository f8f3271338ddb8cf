"""Fused attention (FlashAttention-2 algorithm): exact, memory-linear in the sequence length.

    out = fastlm.ops.attention(q, k, v, causal=True)                # (B, S, H, D)
    out, lse = fastlm.ops.attention(q, k, v, return_lse=True)       # lse (B, H, Sq), fp32

CPU tensors run the C++ kernels (csrc/cpu/attention*.cpp), CUDA tensors the Triton ones
(kernels/attention.py), anything else (fp64, FASTLM_BACKEND=reference) the plain-torch reference
(fastlm/ops/reference_attention.py), whose docstring defines the masks.
"""
from __future__ import annotations

import math
import numbers

import torch

from fastlm.ops import reference_attention as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import register_backward_op, register_op

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
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"attention: with cu_seqlens q and k/v must have the same number of tokens, "
                         f"got {q.shape[0]} and {k.shape[0]}")
    if max_seqlen is not None and (not isinstance(max_seqlen, numbers.Integral) or isinstance(max_seqlen, bool)
                                   or max_seqlen < 0):
        raise ValueError(f"attention: max_seqlen must be a non-negative integer, got {max_seqlen!r}")
    if torch.compiler.is_compiling():  # values are unknown while tracing; the kernels check again
        return int(max_seqlen or 0)
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != q.shape[0]:
        raise ValueError(f"attention: cu_seqlens must start at 0 and end at the number of tokens ({q.shape[0]}), "
                         f"got {cu[0]} ... {cu[-1]}")
    lengths = [b - a for a, b in zip(cu[:-1], cu[1:])]
    if min(lengths) < 0:
        raise ValueError(f"attention: cu_seqlens must be increasing, got {cu}")
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
    rank = 4 if cu_seqlens is None else 3
    layout = "(batch, seqlen, heads, head_dim)" if rank == 4 else "(total_tokens, heads, head_dim) with cu_seqlens"
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != rank:
            hint = "" if rank == 3 or t.dim() != 3 else " (3-D packed inputs need cu_seqlens)"
            raise ValueError(f"attention: {name} must be {rank}-D {layout}, got shape {tuple(t.shape)}{hint}")
    if k.shape != v.shape:
        raise ValueError(f"attention: k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if rank == 4 and q.shape[0] != k.shape[0]:
        raise ValueError(f"attention: q and k/v batch sizes differ: {q.shape[0]} and {k.shape[0]}")
    d = q.shape[-1]
    if k.shape[-1] != d:
        raise ValueError(f"attention: q and k/v head_dim differ: {d} and {k.shape[-1]}")
    if not MIN_HEAD_DIM <= d <= MAX_HEAD_DIM:
        raise ValueError(f"attention: head_dim must be between {MIN_HEAD_DIM} and {MAX_HEAD_DIM}, got {d}")
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
              cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None, return_lse: bool = False):
    """softmax(q k^T * softmax_scale + mask) v, without materializing the scores.

    q: (B, Sq, Hq, D); k, v: (B, Sk, Hkv, D) with Hq a multiple of Hkv (GQA/MQA); 8 <= D <= 256.
    causal: query i sees keys j <= i + Sk - Sq (aligned bottom-right, as for decoding with a KV cache).
    window=(left, right): query i sees keys i' - left <= j <= i' + right, i' = i + Sk - Sq (-1: unbounded).
    cu_seqlens: (n + 1,) int32/int64 offsets of n packed sequences; q, k, v are then (total, heads, D)
    and no token attends across sequences. max_seqlen: the longest of them (computed when omitted).
    softmax_scale defaults to 1/sqrt(D). Returns out (like q), and with return_lse=True also the
    logsumexp of the scaled scores, fp32, (B, Hq, Sq) or (Hq, total) with cu_seqlens (-inf for a query
    that sees no key; its output is 0).
    """
    scale = _check(q, k, v, softmax_scale, cu_seqlens)
    left, right = _window(causal, window)
    if not isinstance(return_lse, bool):
        raise TypeError(f"attention: return_lse must be True or False, got {return_lse!r}")
    max_len = 0
    if cu_seqlens is not None:
        max_len = _check_cu_seqlens(cu_seqlens, q, k, max_seqlen)
    elif max_seqlen is not None:
        raise ValueError("attention: max_seqlen is only used with cu_seqlens")
    if use_reference(q, k, v):
        out, lse = reference.attention(q, k, v, softmax_scale=scale, window=(left, right), cu_seqlens=cu_seqlens)
        out, lse = out.to(q.dtype), lse.to(torch.float32)
    else:
        out, lse = torch.ops.fastlm.attention_fwd(q, k, v, cu_seqlens, max_len, scale, left, right)
    return (out, lse) if return_lse else out
