"""Plain-torch references of cross_entropy (per-row losses) and linear_cross_entropy.

Per row with logits x (V,), label y, smoothing e and z-loss weight z (fp32 math):
    lse = logsumexp(x);  loss = lse - (1 - e) x[y] - e mean(x) + z lse^2
rows whose label is ignore_index have loss 0 and no gradient. lse is returned for the backward.
"""
from __future__ import annotations

import torch


def _math(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))  # fp32 math (fp64 stays fp64)


def cross_entropy_fwd(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int, label_smoothing: float,
                      z_loss: float):
    x = _math(logits)
    lse = torch.logsumexp(x, dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0).long()
    target = x.gather(-1, safe[:, None]).squeeze(-1)
    loss = lse - (1 - label_smoothing) * target - label_smoothing * x.mean(-1) + z_loss * lse * lse
    return torch.where(valid, loss, 0.0), lse


def cross_entropy_bwd(grad_loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, lse: torch.Tensor,
                      ignore_index: int, label_smoothing: float, z_loss: float) -> torch.Tensor:
    x = _math(logits)
    valid = labels != ignore_index
    p = torch.exp(x - lse[:, None])
    g = p * (1 + 2 * z_loss * lse[:, None]) - label_smoothing / x.shape[-1]
    safe = torch.where(valid, labels, 0).long()
    g.scatter_add_(-1, safe[:, None], torch.full_like(lse[:, None], -(1 - label_smoothing)))
    g = g * torch.where(valid, _math(grad_loss), 0.0)[:, None]
    return g.to(logits.dtype)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                         label_smoothing: float = 0.0, z_loss: float = 0.0) -> torch.Tensor:
    """Per-row losses with the whole (N, V) logits in memory: the oracle for the chunked op."""
    logits = hidden @ weight.t()
    x = _math(logits)
    lse = torch.logsumexp(x, dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, 0).long()
    target = x.gather(-1, safe[:, None]).squeeze(-1)
    loss = lse - (1 - label_smoothing) * target - label_smoothing * x.mean(-1) + z_loss * lse * lse
    return torch.where(valid, loss, 0.0)
