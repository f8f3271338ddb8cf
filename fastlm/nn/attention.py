"""Causal self-attention.

The `Attention` module does the projections, RoPE and the KV cache; `attention()` /
`attention_bthd()` are layout wrappers of `fastlm.ops.attention`, which picks the fused
FlashAttention kernels or torch SDPA (attention dropout, head sizes outside 8..256).
"""
from __future__ import annotations

import torch
from torch import nn

from fastlm import ops
from fastlm.nn.linear import Linear
from fastlm.ops.attention_sdpa import document_ids  # noqa: F401  (fastlm.models.gpt imports it from here)


def attention_bthd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                   dropout_p: float = 0.0, scale: float | None = None, cu_seqlens: torch.Tensor | None = None,
                   max_seqlen: int | None = None) -> torch.Tensor:
    """Attention in the (B, T, H, D) layout: q (B, Tq, Hq, D), k/v (B, Tk, Hkv, D) -> (B, Tq, Hq, D).

    cu_seqlens: offsets of packed documents in the flattened B*T tokens (no attention across them).
    """
    if k.dtype != q.dtype:  # e.g. an fp32 KV cache under bf16 autocast
        k, v = k.to(q.dtype), v.to(q.dtype)
    return ops.attention(q, k, v, causal=causal, softmax_scale=scale, dropout_p=dropout_p, cu_seqlens=cu_seqlens,
                         max_seqlen=max_seqlen)


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
