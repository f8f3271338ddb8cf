"""Causal self-attention.

`attention()` is the single place the attention math is called; the fused-attention issue swaps
its body for a kernel. The `Attention` module does the projections, RoPE and the KV cache.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.nn.rope import apply_rope

# torch >= 2.5 repeats grouped K/V heads inside SDPA; older builds get an explicit repeat.
_SDPA_HAS_GQA = torch.torch_version.TorchVersion(torch.__version__) >= (2, 5)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
              dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
    """Scaled dot-product attention with grouped K/V heads.

    q: (B, Hq, Tq, D); k, v: (B, Hkv, Tk, D) with Hq % Hkv == 0. Returns (B, Hq, Tq, D).
    With causal=True and Tk > Tq (a KV cache in front of the queries), the queries are the last
    Tq positions: the mask is aligned bottom-right (query i sees keys 0..Tk-Tq+i).
    """
    tq, tk = q.shape[-2], k.shape[-2]
    if k.dtype != q.dtype:  # e.g. an fp32 KV cache under bf16 autocast
        k, v = k.to(q.dtype), v.to(q.dtype)
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


class Attention(nn.Module):
    """Multi-head / grouped-query causal self-attention.

    One fused projection `qkv` (output [q | k | v], n_head + 2 * n_kv_head heads of head_dim) and
    an output projection `proj`. RoPE is applied when (cos, sin) are passed to forward.
    """

    def __init__(self, d_model: int, n_head: int, n_kv_head: int, head_dim: int, bias: bool = True,
                 dropout: float = 0.0, layer_idx: int = 0):
        super().__init__()
        if n_head % n_kv_head:
            raise ValueError(f"n_head ({n_head}) must be a multiple of n_kv_head ({n_kv_head})")
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, head_dim
        self.layer_idx = layer_idx  # which slot of a KVCache this layer uses
        self.dropout = dropout
        self.qkv = nn.Linear(d_model, (n_head + 2 * n_kv_head) * head_dim, bias=bias)
        self.proj = nn.Linear(n_head * head_dim, d_model, bias=bias)
        self.resid_drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv_cache=None) -> torch.Tensor:
        b, t, _ = x.shape
        hd = self.head_dim
        q, k, v = self.qkv(x).split([self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=-1)
        q = q.view(b, t, self.n_head, hd)
        k = k.view(b, t, self.n_kv_head, hd)
        v = v.view(b, t, self.n_kv_head, hd)
        if rope is not None:  # in (B, T, H, D), before the transposes: cos/sin broadcast over heads
            cos, sin = rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if kv_cache is not None:
            k, v = kv_cache.update(self.layer_idx, k, v)
        y = attention(q, k, v, causal=True, dropout_p=self.dropout if self.training else 0.0)
        y = y.transpose(1, 2).reshape(b, t, self.n_head * hd)
        return self.resid_drop(self.proj(y))
