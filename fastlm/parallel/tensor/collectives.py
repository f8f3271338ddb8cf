"""The tensor-parallel collectives as autograd functions (Megatron's f / g / scatter / gather).

Each function names the process group it runs on (the mesh's tp group). Forward and backward:

    copy_to_tp                  identity         | all-reduce       (input of a column-parallel layer)
    reduce_from_tp              all-reduce       | identity         (output of a row-parallel layer)
    scatter_to_tp               keep my chunk    | all-gather       (along `dim`, default last)
    gather_from_tp              all-gather       | keep my chunk
    scatter_to_sequence         keep my chunk    | all-gather       (along the sequence, dim 1)
    gather_from_sequence        all-gather       | reduce-scatter   (sequence parallel -> column-parallel)
    reduce_scatter_to_sequence  reduce-scatter   | all-gather       (row-parallel -> sequence parallel)

Chunks follow torch.chunk / DTensor Shard semantics: ceil(n / tp) elements per rank, the last ones
smaller (gathers of unequal chunks pad to the largest). `traffic` counts the bytes each collective
sends per rank (ring algorithm), for the benchmark.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.distributed as dist

from fastlm.parallel.mesh import record_collective

# torch 2.13 renamed the flat-tensor collectives (the old names warn); older builds have only the old ones.
_all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor

# collective name -> bytes this rank sends, as a ring algorithm would: an all-reduce of N bytes
# 2 (n - 1) / n * N, an all-gather of n chunks of c bytes (n - 1) c, a reduce-scatter of N (n - 1) / n * N.
traffic: Counter = Counter()


def _size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def _rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def chunk_range(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, end) of chunk `index` when n splits into `parts` torch.chunk-style pieces."""
    size = -(-n // parts)
    start = min(index * size, n)
    return start, min(start + size, n)


_RING = {"all_reduce": lambda n: 2 * (n - 1) / n, "all_gather": lambda n: n - 1,
         "reduce_scatter": lambda n: (n - 1) / n}


def _count(name: str, t: torch.Tensor, group) -> None:
    record_collective(f"{name} (tensor parallel)")
    traffic[name] += round(t.numel() * t.element_size() * _RING[name](_size(group)))


# ---------------------------------------------------------------- plain collectives (no autograd)

def all_reduce(x: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if _size(group) == 1:
        return x
    x = x.contiguous()
    _count("all_reduce", x, group)
    dist.all_reduce(x, op=op, group=group)
    return x


def split(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    """This rank's chunk of x along dim (a contiguous copy)."""
    n = _size(group)
    if n == 1:
        return x
    start, end = chunk_range(x.shape[dim], n, _rank(group))
    return x.narrow(dim, start, end - start).contiguous()


def all_gather(x: torch.Tensor, group, dim: int, full: int | None = None) -> torch.Tensor:
    """Concatenate every rank's x along dim. `full`: the total size when chunks are unequal."""
    n = _size(group)
    if n == 1:
        return x
    dim = dim % x.dim()
    local = x.shape[dim]
    full = local * n if full is None else full
    chunk = -(-full // n)
    x = x.movedim(dim, 0)
    if local < chunk:  # pad the short chunk (torch.chunk semantics: only trailing chunks are short)
        x = torch.cat([x, x.new_zeros((chunk - local, *x.shape[1:]))])
    x = x.contiguous()
    out = x.new_empty((n * chunk, *x.shape[1:]))
    _count("all_gather", x, group)
    _all_gather_flat(out, x, group=group)
    return out[:full].movedim(0, dim).contiguous()


def reduce_scatter(x: torch.Tensor, group, dim: int) -> torch.Tensor:
    """Sum over the ranks, each keeping its chunk along dim (dim's size must divide evenly)."""
    n = _size(group)
    if n == 1:
        return x
    dim = dim % x.dim()
    if x.shape[dim] % n:
        raise ValueError(f"reduce_scatter: size {x.shape[dim]} of dim {dim} is not divisible by the tp size {n}")
    x = x.movedim(dim, 0).contiguous()
    out = x.new_empty((x.shape[0] // n, *x.shape[1:]))
    _count("reduce_scatter", x, group)
    _reduce_scatter_flat(out, x, group=group)
    return out.movedim(0, dim).contiguous()


# ---------------------------------------------------------------- autograd functions

class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad.clone(), ctx.group), None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        return all_reduce(x.clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _Scatter(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim, ctx.full = group, dim, x.shape[dim]
        return split(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, ctx.group, ctx.dim, ctx.full), None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim, full):
        ctx.group, ctx.dim = group, dim
        return all_gather(x, group, dim, full)

    @staticmethod
    def backward(ctx, grad):
        return split(grad, ctx.group, ctx.dim), None, None, None


class _GatherFromSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return all_gather(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return reduce_scatter(grad, ctx.group, ctx.dim), None, None


class _ReduceScatterToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        return reduce_scatter(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return all_gather(grad, ctx.group, ctx.dim), None, None


def copy_to_tp(x: torch.Tensor, group) -> torch.Tensor:
    """Forward: identity. Backward: sum the gradient over the tp ranks."""
    return x if _size(group) == 1 else _CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group) -> torch.Tensor:
    """Forward: sum over the tp ranks. Backward: identity."""
    return x if _size(group) == 1 else _ReduceFromTP.apply(x, group)


def scatter_to_tp(x: torch.Tensor, group, dim: int = -1) -> torch.Tensor:
    """Forward: this rank's chunk along dim. Backward: all-gather the gradient."""
    return x if _size(group) == 1 else _Scatter.apply(x, group, dim)


def gather_from_tp(x: torch.Tensor, group, dim: int = -1, full: int | None = None) -> torch.Tensor:
    """Forward: all-gather along dim (total size `full` for unequal chunks). Backward: keep my chunk."""
    return x if _size(group) == 1 else _Gather.apply(x, group, dim, full)


def scatter_to_sequence(x: torch.Tensor, group, dim: int = 1) -> torch.Tensor:
    """Forward: this rank's part of the sequence. Backward: all-gather the gradient."""
    if _size(group) > 1 and x.shape[dim] % _size(group):
        raise ValueError(f"sequence parallel: sequence length {x.shape[dim]} is not divisible by tp = {_size(group)}")
    return scatter_to_tp(x, group, dim)


def gather_from_sequence(x: torch.Tensor, group, dim: int = 1) -> torch.Tensor:
    """Forward: all-gather the sequence. Backward: reduce-scatter (sums the tp ranks' partial gradients)."""
    return x if _size(group) == 1 else _GatherFromSequence.apply(x, group, dim)


def reduce_scatter_to_sequence(x: torch.Tensor, group, dim: int = 1) -> torch.Tensor:
    """Forward: sum over the tp ranks, keep my part of the sequence. Backward: all-gather."""
    return x if _size(group) == 1 else _ReduceScatterToSequence.apply(x, group, dim)
