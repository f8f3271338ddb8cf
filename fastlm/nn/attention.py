"""Causal self-attention.

`attention()` / `attention_bthd()` are the single place the attention math is called: the fused
FlashAttention kernels of `fastlm.ops.attention` (C++ on CPU, Triton on GPU), or torch SDPA when
attention dropout is on (the fused kernels have none) or the head size is outside 8..256.
The `Attention` module does the projections, RoPE and the KV cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastlm import ops
from fastlm.nn.linear import Linear
from fastlm.ops.attention import MAX_HEAD_DIM, MIN_HEAD_DIM

# torch >= 2.5 repeats grouped K/V heads inside SDPA; older builds get an explicit repeat.
_SDPA_HAS_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


def _sdpa(q, k, v, *, causal: bool, dropout_p: float, scale: float | None) -> torch.Tensor:
    """SDPA in (B, H, T, D), bottom-right causal mask when Tk > Tq."""
    tq, tk = q.shape[-2], k.shape[-2]
    mask = None
    is_causal = causal
    if causal and tq != tk:
        is_causal = False
        if tq > 1:  # one query at the end sees every key: no mask needed
            # SDPA's is_causal is top-left aligned, so build the bottom-right mask explicitly.
            mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
    groups = q.shape[1] // k.shape[1]
    if groups == 1:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale)
    if _SDPA_HAS_GQA:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=True)
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                          is_causal=is_causal, scale=scale)


def _repeat_kv(k, v, groups: int):
    if groups == 1:
        return k, v
    return k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)


def document_ids(cu_seqlens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Which packed document (0, 1, ...) each of the num_tokens flattened tokens belongs to."""
    tokens = torch.arange(num_tokens, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens.to(tokens.dtype), tokens, right=True) - 1


def attention_bthd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                   dropout_p: float = 0.0, scale: float | None = None, cu_seqlens: torch.Tensor | None = None,
                   max_seqlen: int | None = None) -> torch.Tensor:
    """Attention in the (B, T, H, D) layout: q (B, Tq, Hq, D), k/v (B, Tk, Hkv, D) -> (B, Tq, Hq, D).

    cu_seqlens: offsets of packed documents in the flattened B*T tokens (no attention across them).
    """
    if k.dtype != q.dtype:  # e.g. an fp32 KV cache under bf16 autocast
        k, v = k.to(q.dtype), v.to(q.dtype)
    fused = dropout_p == 0.0 and MIN_HEAD_DIM <= q.shape[-1] <= MAX_HEAD_DIM
    if cu_seqlens is not None:
        b, t = q.shape[:2]
        if not fused:  # SDPA with an explicit block-diagonal (per-document) mask
            doc = document_ids(cu_seqlens, b * t).view(b, 1, t)
            mask = doc.unsqueeze(-1) == doc.unsqueeze(-2)
            if causal:
                mask = mask & torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), *_repeat_kv(k.transpose(1, 2), v.transpose(1, 2), q.shape[2] // k.shape[2]),
                attn_mask=mask, dropout_p=dropout_p, scale=scale)
            return y.transpose(1, 2)
        y = ops.attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1), causal=causal, softmax_scale=scale,
                          cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        return y.view(b, t, *y.shape[1:])
    if fused:
        return ops.attention(q, k, v, causal=causal, softmax_scale=scale)
    y = _sdpa(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal, dropout_p=dropout_p,
              scale=scale)
    return y.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
              dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention with grouped K/V heads, in the (B, H, T, D) layout.

    q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) with Hq % Hkv == 0. Returns (B, Hq, Tq, D).
    With causal=True and Tk > Tq (a KV cache in front of the queries), the queries are the last
    Tq positions: the mask is aligned bottom-right (query i sees keys 0..Tk-Tq+i).
    """
    y = attention_bthd(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=causal,
                       dropout_p=dropout_p, scale=scale)
    return y.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head / grouped-query self-attention, causal unless causal=False (encoders).

    One fused projection `qkv` (output [q | k | v], n_head + 2 * n_kv_head heads of head_dim) and
    an output projection `proj`. RoPE is applied when (cos, sin) are passed to forward.
    """

    def __init__(self, d_model: int, n_head: int, n_kv_head: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0, layer_idx: int = 0, causal: bool = True):
        super().__init__()
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.layer_idx = layer_idx  # which slot of a KVCache this layer uses
        self.dropout = dropout
        self.causal = causal  # False: bidirectional (encoders)
        self.qkv = Linear(d_model, (n_head + 2 * n_kv_head) * head_dim, bias=bias)
        self.proj = Linear(n_head * head_dim, d_model, bias=bias)
        self.resid_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv_cache=None, cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None) -> torch.Tensor:
        """x (B, T, d_model). cu_seqlens: packed documents in the flattened B*T tokens (then rope's
        cos/sin are per token, (B*T, D/2), with positions restarting at each document)."""
        b, t, _ = x.shape
        hd = self.head_dim
        q, k, v = self.qkv(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=-1)
        q = q.view(b, t, self.n_head, hd)
        k = k.view(b, t, self.n_kv_head, hd)
        v = v.view(b, t, self.n_kv_head, hd)
        if rope is not None:  # in (B, T, H, D): cos/sin broadcast over heads
            cos, sin = rope
            if cos.shape[0] == b * t and b > 1:  # per-token angles (packed documents)
                cos, sin = cos.view(b, t, -1), sin.view(b, t, -1)
            q, k = ops.rope(q, k, cos, sin)  # one fused kernel per tensor, fp32 math
        if kv_cache is not None:  # the cache is (B, H, T, D); the kernels read its transpose in place
            k, v = kv_cache.update(self.layer_idx, k.transpose(1, 2), v.transpose(1, 2))
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        y = attention_bthd(q, k, v, causal=self.causal, dropout_p=self.dropout if self.training else 0.0,
                           cu_seqlens=cu_seqlens, max_seqlen=max_seqlen)
        y = y.reshape(b, t, self.n_head * hd)
        return self.resid_drop(self.proj(y))
