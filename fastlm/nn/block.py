"""A Transformer block. Pre-norm (GPT): x + attn(norm1(x)), then x + mlp(norm2(x)).
Post-norm (BERT, post_norm=True): norm1(x + attn(x)), then norm2(x + mlp(x))."""
from __future__ import annotations

import torch
from torch import nn

from fastlm.nn.attention import Attention
from fastlm.nn.mlp import MLP
from fastlm.nn.norms import LayerNorm, RMSNorm


class Block(nn.Module):
    def __init__(self, *, d_model: int, n_head: int, n_kv_head: int, head_dim: int, d_ff: int,
                 norm: str = "layernorm", norm_eps: float = 1e-5, activation: str = "gelu_new",
                 gated_mlp: bool = False, bias: bool = True, dropout: float = 0.0, layer_idx: int = 0,
                 post_norm: bool = False, causal: bool = True):
        super().__init__()
        self.post_norm = post_norm
        if norm == "layernorm":
            self.norm1, self.norm2 = LayerNorm(d_model, norm_eps, bias), LayerNorm(d_model, norm_eps, bias)
        elif norm == "rmsnorm":
            # Pre-norm: the norms feed only the attention's and the MLP's Linears (16-bit under autocast).
            self.norm1, self.norm2 = (RMSNorm(d_model, norm_eps, autocast_output=not post_norm) for _ in range(2))
        else:
            raise ValueError(f"unknown norm {norm!r}; expected 'layernorm' or 'rmsnorm'")
        self.attn = Attention(d_model, n_head, n_kv_head, head_dim, bias=bias, dropout=dropout,
                              layer_idx=layer_idx, causal=causal)
        self.mlp = MLP(d_model, d_ff, activation, gated=gated_mlp, bias=bias, dropout=dropout)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                kv_cache=None, cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None) -> torch.Tensor:
        if self.post_norm:
            x = self.norm1(x + self.attn(x, rope, kv_cache, cu_seqlens, max_seqlen))
            return self.norm2(x + self.mlp(x))
        a = self.attn(self.norm1(x), rope, kv_cache, cu_seqlens, max_seqlen)
        if self._fuse_add_norm2(x, a):  # one pass: the residual add, norm2, and in the backward their gradients
            x, h = self.norm2.add_forward(x, a)
            return x + self.mlp(h)
        x = x + a
        return x + self.mlp(self.norm2(x))

    def _fuse_add_norm2(self, x: torch.Tensor, a: torch.Tensor) -> bool:
        """fastlm's RMSNorm without hooks (add_forward bypasses its forward), and a sum in x's dtype as `x + a`."""
        n = self.norm2
        return (type(n) is RMSNorm and not n._forward_hooks and not n._forward_pre_hooks
                and x.shape == a.shape and torch.promote_types(x.dtype, a.dtype) == x.dtype)
