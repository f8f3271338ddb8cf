"""The torch SDPA path of fastlm.ops.attention, for what the fused kernels do not do: attention
dropout, an explicit attn_mask, head sizes outside 8..256. Same masks as the kernels (bottom-right
causal and window, packed documents), so the choice never changes the result.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastlm.ops.reference_attention import visible_mask


def document_ids(cu_seqlens: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Which packed document (0, 1, ...) each of the num_tokens flattened tokens belongs to."""
    tokens = torch.arange(num_tokens, device=cu_seqlens.device)
    return torch.searchsorted(cu_seqlens.to(tokens.dtype), tokens, right=True) - 1


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale: float, window_left: int,
                   window_right: int, cu_seqlens: torch.Tensor | None, dropout_p: float,
                   attn_mask: torch.Tensor | None) -> torch.Tensor:
    """q (B, Sq, Hq, D), k/v (B, Sk, Hkv, D) -> (B, Sq, Hq, D). cu_seqlens: document offsets in the
    flattened B * Sq tokens (Sq == Sk; a row start is always a document start). attn_mask: bool
    (True: attend) or additive, broadcastable to (B, Hq, Sq, Sk), on top of the other masks."""
    b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
    mask = None
    # SDPA's own causal mask is aligned top-left: the same as bottom-right only when sq == sk.
    is_causal = (window_left < 0 and window_right == 0 and sq == sk and cu_seqlens is None and attn_mask is None)
    if not is_causal and (window_left >= 0 or window_right >= 0):
        mask = visible_mask(sq, sk, window_left, window_right, q.device)
    if cu_seqlens is not None:  # block-diagonal: no attention across documents
        doc = document_ids(cu_seqlens, b * sq).view(b, 1, sq)
        same = doc.unsqueeze(-1) == doc.unsqueeze(-2)
        mask = same if mask is None else same & mask
    if attn_mask is not None:
        if mask is None:
            mask = attn_mask
        elif attn_mask.dtype == torch.bool:
            mask = attn_mask & mask
        else:
            mask = torch.where(mask, attn_mask, float("-inf"))
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                       dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                                       enable_gqa=q.shape[2] != k.shape[2])
    return y.transpose(1, 2)
