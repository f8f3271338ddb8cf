"""CLIP's symmetric InfoNCE loss, chunked: the (B x B) similarity matrix is never stored whole.

    loss = fastlm.ops.contrastive_loss(image_features, text_features, logit_scale)   # features L2-normalised

equals 0.5 * (cross_entropy(S, arange(B)) + cross_entropy(S.T, arange(B))) with S = exp(logit_scale) *
image_features @ text_features.T (logit_scale is the log of the temperature's inverse, as CLIP learns it).
The forward computes S chunk_size rows at a time and keeps only each row's and each column's logsumexp
(2B floats); the backward recomputes each chunk of S: for a chunk of rows I, dS = (softmax_rows(S_I) +
softmax_cols(S_I) - 2 * onehot) / 2B, then grad_image[I] = s dS @ T, grad_text += s dS^T @ I_feat and
grad_logit_scale += s * sum(dS * I_feat @ T^T). Memory O(chunk_size x B) instead of O(B^2).
"""
from __future__ import annotations

import torch


def _acc(t: torch.Tensor) -> torch.dtype:
    """The accumulation dtype: fp32 for 16-bit features, the features' own otherwise (fp64 stays fp64)."""
    return torch.promote_types(t.dtype, torch.float32)


def _column_lse(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, chunk: int) -> torch.Tensor:
    """logsumexp over images of each column of S, streamed over row chunks (running max and sum)."""
    b, acc = image.shape[0], _acc(image)
    m = torch.full((text.shape[0],), float("-inf"), dtype=acc, device=image.device)
    s = torch.zeros(text.shape[0], dtype=acc, device=image.device)
    for start in range(0, b, chunk):
        logits = (scale * (image[start:start + chunk] @ text.T)).to(acc)
        new_m = torch.maximum(m, logits.max(0).values)
        s = s * torch.exp(m - new_m) + torch.exp(logits - new_m).sum(0)
        m = new_m
    return m + torch.log(s)


class _ContrastiveLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, text, logit_scale, chunk):
        scale = logit_scale.exp()
        b, acc = image.shape[0], _acc(image)
        row_lse = torch.empty(b, dtype=acc, device=image.device)
        diag = (scale * (image * text).sum(-1)).to(acc)
        for start in range(0, b, chunk):
            row_lse[start:start + chunk] = torch.logsumexp((scale * (image[start:start + chunk] @ text.T)).to(acc), -1)
        col_lse = _column_lse(image, text, scale, chunk)
        loss = 0.5 * ((row_lse - diag).mean() + (col_lse - diag).mean())
        ctx.save_for_backward(image, text, logit_scale, row_lse, col_lse)
        ctx.chunk = chunk
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        image, text, logit_scale, row_lse, col_lse = ctx.saved_tensors
        scale = logit_scale.exp()
        b, chunk, acc = image.shape[0], ctx.chunk, _acc(image)
        g, s = grad_loss.to(acc) / (2 * b), scale.to(acc)
        grad_image = torch.empty_like(image)
        grad_text = torch.zeros(text.shape, dtype=acc, device=text.device)
        grad_scale = torch.zeros((), dtype=acc, device=image.device)
        for start in range(0, b, chunk):
            rows = image[start:start + chunk]
            dots = (rows @ text.T).to(acc)                       # (c, B)
            logits = s * dots
            d = torch.exp(logits - row_lse[start:start + chunk, None]) + torch.exp(logits - col_lse[None, :])
            idx = torch.arange(rows.shape[0], device=image.device)
            d[idx, start + idx] -= 2.0
            d *= g
            grad_image[start:start + chunk] = (s * (d @ text.to(acc))).to(image.dtype)
            grad_text += s * (d.T @ rows.to(acc))
            grad_scale += (d * logits).sum()                     # d(s * dots)/d(log s) = s * dots
        return grad_image, grad_text.to(text.dtype), grad_scale.to(logit_scale.dtype), None


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                     chunk_size: int = 1024) -> torch.Tensor:
    """Symmetric InfoNCE of matching (image i, text i) pairs; features (B, D), logit_scale a scalar tensor."""
    if image_features.dim() != 2 or image_features.shape != text_features.shape:
        raise ValueError(f"contrastive_loss: image and text features must be (B, D) of one shape, got "
                         f"{tuple(image_features.shape)} and {tuple(text_features.shape)}")
    if logit_scale.numel() != 1:
        raise ValueError(f"contrastive_loss: logit_scale must be a scalar, got shape {tuple(logit_scale.shape)}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"contrastive_loss: chunk_size must be a positive integer, got {chunk_size!r}")
    return _ContrastiveLoss.apply(image_features, text_features, logit_scale.reshape(()), chunk_size)
