"""Cross-entropy over vocabulary-split logits, without ever gathering the full logits.

Each tp rank holds logits for its vocabulary slice [vocab_start, vocab_start + V_local). Three
all-reduces of one number per token (the max, the sum of exponentials, the target's logit) give
the exact loss; the backward is local (softmax - one-hot, on this rank's slice).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from fastlm.parallel.tensor.collectives import all_reduce


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, group, vocab_start, ignore_index):
        ctx.dtype = logits.dtype
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # fp32 math for 16-bit logits
        n_local = logits.shape[-1]
        row_max = all_reduce(logits.max(dim=-1).values, group, op=dist.ReduceOp.MAX)
        shifted = logits - row_max.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = all_reduce(exp.sum(dim=-1), group)
        valid = targets != ignore_index
        local_t = targets - vocab_start
        mine = valid & (local_t >= 0) & (local_t < n_local)
        idx = local_t.masked_fill(~mine, 0)
        target_logit = shifted.gather(-1, idx.unsqueeze(-1)).squeeze(-1).masked_fill(~mine, 0.0)
        target_logit = all_reduce(target_logit, group)
        losses = (sum_exp.log() - target_logit).masked_fill(~valid, 0.0)
        count = valid.sum()
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), idx, mine, valid, count)
        return losses.sum() / count

    @staticmethod
    def backward(ctx, grad):
        softmax, idx, mine, valid, count = ctx.saved_tensors
        g = softmax.clone() if ctx.needs_input_grad[0] else softmax
        g.scatter_add_(-1, idx.unsqueeze(-1), -mine.to(g.dtype).unsqueeze(-1))
        g.mul_((grad / count) * valid.to(g.dtype).unsqueeze(-1))
        return g.to(ctx.dtype), None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, group=None, vocab_start: int = 0,
                                 ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of (N, V_local) logits (this rank's vocabulary slice) against (N,) global
    target ids; targets equal to ignore_index are not counted. Equals F.cross_entropy on the full logits."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"vocab_parallel_cross_entropy: expected logits (N, V_local) and targets (N,), got "
                         f"{tuple(logits.shape)} and {tuple(targets.shape)}")
    return _VocabParallelCrossEntropy.apply(logits, targets, group, vocab_start, ignore_index)
