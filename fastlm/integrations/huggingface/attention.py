"""fastlm's attention as a Hugging Face attention implementation named "fastlm".

HF calls it with q (B, Hq, T, D) and k/v (B, Hkv, S, D) and wants (B, T, Hq, D) back; this file only
translates HF's arguments for fastlm.ops.attention, which picks the fused kernels or torch SDPA
(padding masks, dropout, odd head sizes). The "fastlm" mask function is SDPA's, which leaves the mask
out (None) whenever is_causal says it all (also when a sliding window covers the whole sequence).
"""
from __future__ import annotations

import torch

from fastlm import ops

NAME = "fastlm"


def fastlm_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                             is_causal: bool | None = None, position_bias: torch.Tensor | None = None, **kwargs):
    if kwargs.get("softcap") is not None:
        raise ValueError('attn_implementation="fastlm" does not support softcap; use "eager" for this model')
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    if position_bias is not None:  # T5-style biases: an additive mask, as HF's SDPA function builds it
        from transformers.integrations.sdpa_attention import create_position_bias_mask

        mask = create_position_bias_mask(position_bias, mask, bool(causal) and query.shape[2] > 1, query, key)
    if mask is not None:  # HF's masks include the causal part
        causal = False
    out = ops.attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), causal=bool(causal),
                        softmax_scale=scaling, dropout_p=dropout, attn_mask=mask)
    return out, None


def register_attention() -> None:
    """Makes attn_implementation="fastlm" valid in transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, fastlm_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
