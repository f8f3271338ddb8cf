"""The loss of a vocabulary head, chosen by what the head layer is.

    logits, loss = head_loss(model.lm_head, hidden, targets, return_logits=True)

A head layer may offer two things (duck typing, so a model never asks what wrapped it):
- `fused_cross_entropy(hidden, targets)`: the loss without storing the (N, vocab) logits
  (fastlm.nn.Linear: ops.linear_cross_entropy);
- `logits_cross_entropy(logits, targets)`: the loss of its own output (a vocabulary-parallel head
  holds only its slice of the logits, so it brings the vocabulary-parallel cross-entropy).
Anything else (torch's nn.Linear, int8 or LoRA linears) gets its logits' plain cross-entropy.
"""
from __future__ import annotations

import torch
from torch import nn

from fastlm import ops


def head_loss(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
              return_logits: bool = True) -> tuple[torch.Tensor | None, torch.Tensor]:
    """(logits or None, mean cross-entropy over the targets that are not -100)."""
    fused = getattr(head, "fused_cross_entropy", None)
    if not return_logits and fused is not None:
        return None, fused(hidden, targets)
    logits = head(hidden)
    return logits, logits_loss(head, logits, targets)


def logits_loss(head: nn.Module, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of `head`'s output logits (..., V) against targets (...), -100 ignored."""
    own = getattr(head, "logits_cross_entropy", None)
    logits, targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if own is not None:
        return own(logits, targets)
    return ops.cross_entropy(logits, targets, ignore_index=-100)  # fp32 math, no fp32 copy of the logits


def full_logits(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The head's logits over the whole vocabulary (what sampling needs); a head that holds only a
    slice of them raises instead of returning it."""
    check = getattr(head, "check_full_logits", None)
    if check is not None:
        check()
    return head(hidden)
