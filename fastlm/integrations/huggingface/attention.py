"""fastlm's fused attention as a Hugging Face attention implementation named "fastlm".

HF calls it with q (B, Hq, T, D) and k/v (B, Hkv, S, D) and wants (B, T, Hq, D) back. The fused
kernel runs when it computes exactly what SDPA would: no mask tensor (causal or bidirectional, as
the module says), no attention dropout, a head size the kernel supports; anything else (padding
masks, dropout, odd head sizes) goes to HF's SDPA function. The "fastlm" mask function is SDPA's,
which leaves the mask out (None) whenever is_causal says it all (also when a sliding window
covers the whole sequence).
"""
from __future__ import annotations

import torch

from fastlm import ops
from fastlm.ops.attention import MAX_HEAD_DIM, MIN_HEAD_DIM

NAME = "fastlm"


def fastlm_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    fused = (attention_mask is None and dropout == 0.0 and kwargs.get("softcap") is None
             and kwargs.get("position_bias") is None
             and MIN_HEAD_DIM <= query.shape[-1] <= MAX_HEAD_DIM and value.shape[-1] == query.shape[-1]
             and query.shape[1] % key.shape[1] == 0)
    if not fused:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = ops.attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), causal=bool(causal),
                        softmax_scale=scaling)
    return out, None


def register_attention() -> None:
    """Makes attn_implementation="fastlm" valid in transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, fastlm_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
