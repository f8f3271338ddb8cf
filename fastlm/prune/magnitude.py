"""Magnitude pruning masks: unstructured (per layer or global) and N:M structured.

A mask is a bool tensor shaped like the weight, True where the weight is kept. Unstructured
pruning zeroes exactly round(sparsity * numel) weights of each layer (scope "layer") or of all the
pruned layers together (scope "global"): the smallest |w|, ties broken by position, so the count
is exact even when many weights are equal. N:M keeps the N largest |w| of every M consecutive
weights along the input dimension (a row's last, partial group keeps min(N, its size)).
"""
from __future__ import annotations

import torch
from torch import nn

PATTERNS = ("unstructured", "2:4")  # the CLI's documented choices; any "N:M" with 0 < N < M is accepted
SCOPES = ("layer", "global")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """None for "unstructured", (N, M) for "N:M"; ValueError otherwise."""
    if pattern == "unstructured":
        return None
    n, sep, m = str(pattern).partition(":")
    if sep and n.isdigit() and m.isdigit() and 0 < int(n) < int(m):
        return int(n), int(m)
    raise ValueError(f"--pattern {pattern!r}: expected \"unstructured\" or \"N:M\" with 0 < N < M (e.g. \"2:4\")")


def prunable_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(qualified name, module) of the nn.Linear modules inside the model's transformer blocks."""
    found = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and "blocks" in name.split(".")[:-1]]
    if not found:
        raise ValueError(f"{type(model).__name__} has no linear layers inside `blocks` to prune")
    return found


def unstructured_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep all but the round(sparsity * numel) smallest scores (exactly that many pruned)."""
    flat = scores.flatten()
    pruned = round(sparsity * flat.numel())
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if pruned:
        order = torch.argsort(flat, stable=True)  # ties: the earlier position is pruned first
        mask[order[:pruned]] = False
    return mask.view_as(scores)


def nm_mask(weight: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |w| of every m consecutive weights of each row (the input dimension)."""
    rows, cols = weight.shape
    groups = -(-cols // m)
    scores = torch.full((rows, groups * m), -1.0, dtype=torch.float64, device=weight.device)
    scores[:, :cols] = weight.detach().abs().double()  # padding (-1) is never kept over a real weight
    keep = scores.view(rows, groups, m).topk(n, dim=-1).indices
    mask = torch.zeros(rows, groups, m, dtype=torch.bool, device=weight.device)
    mask.scatter_(-1, keep, True)
    return mask.view(rows, groups * m)[:, :cols].contiguous()


def prune_model(model: nn.Module, sparsity: float | None = None, pattern: str = "unstructured",
                scope: str = "layer") -> dict[str, torch.Tensor]:
    """Zero the pruned weights of `model` in place; returns {linear name: bool mask (True = kept)}."""
    nm = parse_pattern(pattern)
    if scope not in SCOPES:
        raise ValueError(f"--scope {scope!r}: expected one of {', '.join(SCOPES)}")
    if nm is not None:
        implied = 1 - nm[0] / nm[1]
        if sparsity is not None and abs(sparsity - implied) > 1e-9:
            raise ValueError(f"--sparsity {sparsity}: pattern {pattern} prunes {implied:g} of the weights "
                             f"(leave --sparsity out)")
        if scope != "layer":
            raise ValueError(f"--scope {scope}: applies to unstructured pruning; {pattern} is per group of {nm[1]}")
    elif sparsity is None or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"--sparsity {sparsity}: expected a fraction in [0, 1) of the weights to prune")
    linears = prunable_linears(model)
    if nm is not None:
        masks = {name: nm_mask(m.weight, *nm) for name, m in linears}
    elif scope == "layer":
        masks = {name: unstructured_mask(m.weight.detach().abs(), sparsity) for name, m in linears}
    else:
        flat = torch.cat([m.weight.detach().abs().flatten().float() for _, m in linears])
        keep = unstructured_mask(flat, sparsity)
        masks, start = {}, 0
        for name, m in linears:
            masks[name] = keep[start:start + m.weight.numel()].view_as(m.weight)
            start += m.weight.numel()
    with torch.no_grad():
        for name, m in linears:
            m.weight.mul_(masks[name])
    return masks
