"""Global gradient-norm clipping of a tensor-parallel model, over its tp (and dp) ranks.

The norm is that of the whole model's gradient: a tp-split parameter contributes every rank's
slice, a replicated one (norms, biases of row-parallel layers, replicated K/V) is counted once
(on tp rank 0). With ZeRO-1 (DataParallel(shard_optimizer=True)) each dp rank holds the reduced
gradient of only its part of every bucket: those parts are what it counts and clips.
"""
from __future__ import annotations

import torch

from fastlm.parallel.tensor.collectives import all_reduce
from fastlm.parallel.tensor.parallelize import is_tp_sharded


def clip_grad_norm_(model: torch.nn.Module, max_norm: float, mesh, dp=None) -> torch.Tensor:
    """Clip in place so that the global norm is at most max_norm; returns the norm before clipping.

    model: the tp model (or the DataParallel wrapping it, then pass it as dp too).
    """
    counted = mesh.tp_rank == 0
    sq = torch.zeros((), dtype=torch.float32, device=mesh.device if dp is None else dp.device)
    if dp is not None and dp.grads_sharded:  # each dp rank counts and clips its shard of the gradients
        grads = []
        for seg in dp.shard_segments():
            g = dp.flat_grad(seg.index)[seg.lo:seg.hi]
            grads.append(g)
            if counted or is_tp_sharded(dp.params[seg.index]):
                sq += g.float().pow(2).sum()
        sq = all_reduce(sq, dp.group)
    else:
        params = [p for p in model.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        for p in params:
            if counted or is_tp_sharded(p):
                sq += p.grad.float().pow(2).sum()
    total = all_reduce(sq, mesh.tp_group).sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    if grads:
        torch._foreach_mul_(grads, coef)
    return total
