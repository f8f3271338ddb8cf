"""Column- and row-parallel linear layers (Megatron-LM).

ColumnParallelLinear splits the output features: rank i holds rows i of the weight (of each fused
part: [q | k | v], [gate | up]) and computes its slice of the output. RowParallelLinear splits the
input features: rank i multiplies its slice of the input, and the partial outputs are summed over
the tp ranks (or, with sequence parallel, summed and scattered along the sequence).

Built from a full nn.Linear with `from_linear`, so shard i is slice i of the full weight: a tp
model equals the tp=1 model built from the same seed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.parallel.tensor.collectives import copy_to_tp, gather_from_tp, reduce_from_tp, reduce_scatter_to_sequence
from fastlm.parallel.tensor.layout import Part, split_parts

INPUT_MODES = ("replicated", "gathered")


def _tp(group) -> tuple[int, int]:
    import torch.distributed as dist

    return (1, 0) if group is None else (dist.get_world_size(group), dist.get_rank(group))


def sum_grad_over_tp(param: nn.Parameter, group) -> None:
    """A replicated parameter whose gradient each tp rank only gets part of (sequence-parallel norms,
    replicated K/V): sum each backward's contribution over the tp ranks before it accumulates."""
    from fastlm.parallel.tensor.collectives import all_reduce

    if _tp(group)[0] > 1 and param.requires_grad and not getattr(param, "_tp_grad_summed", False):  # not frozen
        param.register_hook(lambda g: all_reduce(g.clone(), group))
        param._tp_grad_summed = True


def _full_linear(in_features, out_features, bias, device, dtype) -> nn.Linear:
    # The full layer, initialized as nn.Linear would be (the same RNG draws on every rank).
    return nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)


def _take_rows(t: torch.Tensor, parts: list[Part]) -> torch.Tensor:
    """This rank's rows of each part of a full (fused) tensor: the parts lie one after another along dim."""
    pieces, base = [], 0
    for p in parts:
        pieces.append(t.narrow(p.dim, base + p.global_offset, p.local_len))
        base += p.global_len
    return torch.cat(pieces, dim=parts[0].dim)


class ColumnParallelLinear(nn.Module):
    """y_i = x W_i^T + b_i: this rank's output features. parts: canonical tensors fused along the
    output ([("q", n_q), ("k", n_kv), ("v", n_kv)]); each is split over tp separately.

    input_mode "replicated": x is the same on every tp rank (its gradient is summed over them);
    "gathered": x came from gather_from_sequence, whose backward already sums (sequence parallel).
    gather_output: all-gather the output features (only for a single part).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group=None,
                 parts: list[tuple[str | None, int]] | None = None, input_mode: str = "replicated",
                 gather_output: bool = False, device=None, dtype=None, _init: nn.Linear | None = None):
        super().__init__()
        if input_mode not in INPUT_MODES:
            raise ValueError(f"input_mode must be one of {INPUT_MODES}, got {input_mode!r}")
        parts = parts or [(None, out_features)]
        if sum(s for _, s in parts) != out_features:
            raise ValueError(f"parts {parts} do not add up to out_features = {out_features}")
        if gather_output and len(parts) > 1:
            raise ValueError("gather_output needs a single part")
        self.group, self.input_mode, self.gather_output = group, input_mode, gather_output
        self.in_features, self.out_features = in_features, out_features
        tp, rank = _tp(group)
        self.tp_size, self.tp_rank = tp, rank
        w_parts = split_parts(parts, "weight", 0, tp, rank)
        full = _init if _init is not None else _full_linear(in_features, out_features, bias, device, dtype)
        with torch.no_grad():
            self.weight = nn.Parameter(_take_rows(full.weight, w_parts).clone())
            self.bias = nn.Parameter(_take_rows(full.bias, split_parts(parts, "bias", 0, tp, rank)).clone()) \
                if bias else None
        self.weight._tp_parts = w_parts
        if self.bias is not None:
            self.bias._tp_parts = split_parts(parts, "bias", 0, tp, rank)
        self.out_start = w_parts[0].global_offset  # (single part) first output feature of this rank

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "ColumnParallelLinear":
        return cls(linear.in_features, linear.out_features, linear.bias is not None, _init=linear,
                   device=linear.weight.device, dtype=linear.weight.dtype, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mode == "replicated":
            x = copy_to_tp(x, self.group)
        y = F.linear(x, self.weight, self.bias)
        if self.gather_output:
            y = gather_from_tp(y, self.group, -1, self.out_features)
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(local {self.weight.shape[0]}), tp={self.tp_size}, input={self.input_mode}")


class GQAColumnParallelLinear(ColumnParallelLinear):
    """The attention's qkv when there are fewer kv heads than tp ranks: the q heads are split, the
    K/V weight is replicated, and each rank computes only the kv head its q heads use. Every rank's
    K/V gradient covers only its own q heads, so it is summed over the tp ranks."""

    def __init__(self, in_features: int, n_head: int, n_kv_head: int, head_dim: int, bias: bool = True, *,
                 group=None, input_mode: str = "replicated", device=None, dtype=None, _init: nn.Linear | None = None):
        q, kv = n_head * head_dim, n_kv_head * head_dim
        full = _init if _init is not None else _full_linear(in_features, q + 2 * kv, bias, device, dtype)
        super().__init__(in_features, q, bias, group=group, parts=[("q", q)], input_mode=input_mode,
                         _init=_QRows(full, q))
        self.out_features = q + 2 * kv
        self.head_dim, self.n_kv_head = head_dim, n_kv_head
        # The kv head of this rank's q heads (tp is a multiple of n_kv_head).
        self.kv_head = self.tp_rank * n_kv_head // self.tp_size
        with torch.no_grad():
            self.kv_weight = nn.Parameter(full.weight[q:].clone())
            self.kv_bias = nn.Parameter(full.bias[q:].clone()) if bias else None
        self.kv_weight._tp_parts = [Part("weight[k]", 0, 0, kv, 0, kv), Part("weight[v]", 0, kv, kv, 0, kv)]
        sum_grad_over_tp(self.kv_weight, group)
        if self.kv_bias is not None:
            self.kv_bias._tp_parts = [Part("bias[k]", 0, 0, kv, 0, kv), Part("bias[v]", 0, kv, kv, 0, kv)]
            sum_grad_over_tp(self.kv_bias, group)

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "GQAColumnParallelLinear":
        return cls(linear.in_features, bias=linear.bias is not None, _init=linear,
                   device=linear.weight.device, dtype=linear.weight.dtype, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mode == "replicated":
            x = copy_to_tp(x, self.group)
        rows = self.kv_rows()
        q = F.linear(x, self.weight, self.bias)
        k_v = F.linear(x, self.kv_weight.index_select(0, rows),
                       self.kv_bias.index_select(0, rows) if self.kv_bias is not None else None)
        return torch.cat([q, k_v], dim=-1)


    def kv_rows(self) -> torch.Tensor:
        """The rows of kv_weight ([k | v]) of the kv head this rank computes."""
        hd, kv = self.head_dim, self.n_kv_head * self.head_dim
        rows = torch.cat([torch.arange(self.kv_head * hd, (self.kv_head + 1) * hd) + o for o in (0, kv)])
        return rows.to(self.kv_weight.device)


class _QRows:
    """The q rows of a full qkv Linear, as ColumnParallelLinear's init source."""

    def __init__(self, full: nn.Linear, q: int):
        self.weight = full.weight[:q]
        self.bias = full.bias[:q] if full.bias is not None else None


class RowParallelLinear(nn.Module):
    """y = sum over tp ranks of x_i W_i^T, then + b. x_i: this rank's slice of the input features.

    sequence_parallel: the sum is reduce-scattered along the sequence (dim 1) instead of all-reduced.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, group=None,
                 sequence_parallel: bool = False, device=None, dtype=None, _init: nn.Linear | None = None):
        super().__init__()
        self.group, self.sequence_parallel = group, sequence_parallel
        self.in_features, self.out_features = in_features, out_features
        tp, rank = _tp(group)
        self.tp_size, self.tp_rank = tp, rank
        parts = split_parts([(None, in_features)], "weight", 1, tp, rank)
        full = _init if _init is not None else _full_linear(in_features, out_features, bias, device, dtype)
        with torch.no_grad():
            self.weight = nn.Parameter(_take_rows(full.weight, parts).clone())
            self.bias = nn.Parameter(full.bias.detach().clone()) if bias else None
        self.weight._tp_parts = parts
        if self.bias is not None and sequence_parallel:
            sum_grad_over_tp(self.bias, group)  # added to this rank's part of the sequence only

    @classmethod
    def from_linear(cls, linear: nn.Linear, **kwargs) -> "RowParallelLinear":
        return cls(linear.in_features, linear.out_features, linear.bias is not None, _init=linear,
                   device=linear.weight.device, dtype=linear.weight.dtype, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.sum_partial(F.linear(x, self.weight))

    def sum_partial(self, y: torch.Tensor) -> torch.Tensor:
        """The layer's output from this rank's partial product: summed over the tp ranks, then + bias."""
        y = reduce_scatter_to_sequence(y, self.group) if self.sequence_parallel else reduce_from_tp(y, self.group)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (local {self.weight.shape[1]}), out_features={self.out_features}, "
                f"tp={self.tp_size}, sequence_parallel={self.sequence_parallel}")
