"""LoRA adapters on tensor-parallel linears: parallelize_tp splits a LoRALinear (fastlm.nn.lora) along its base.

A column-parallel base (qkv, fc: output features split) keeps A (rank, in) whole on every rank and
splits B (out, rank) along the output like its weight, each fused part ([q | k | v], [gate | up])
separately: rank i computes its output slice x W_i^T + s (x A^T) B_i^T. A's gradient sums over the
output features, so each rank holds a part of it: it is summed over the tp ranks.

A row-parallel base (proj: input features split) splits A along the input like its weight and keeps
B whole: rank i's partial output x_i W_i^T + s (x_i A_i^T) B^T goes through the base's one all-reduce
(or reduce-scatter), so the LoRA term is summed exactly once. B's gradient s g^T (x_i A_i^T) is a
part on each rank: summed over the tp ranks.

Adapter dropout: a column layer's input is the same on every tp rank (replicated, or gathered along
the sequence), so its mask comes from the "replicated" generator (the same on every rank); a row
layer's input is split, so its mask comes from the "sharded" one (fastlm.parallel.tensor.random).
An int8 base (model.lora.base = "int8": w8a16, one scale per output channel) splits the same way:
its int8 rows and their scales (column), or its int8 columns with every scale whole (row): the
quantization of the full weight, so every rank computes with the one-process weights.
Every parameter (and int8 base buffer) carries `_tp_parts` (canonical keys `...qkv.lora_A`, `...qkv.lora_B[q]`, ...), so
checkpoints, full_state_dict and gradient clipping treat the adapters like the base weights.
"""
from __future__ import annotations

import torch
from torch import nn

from fastlm.nn.lora import Int8LoRALinear, adapted_linear
from fastlm.parallel.tensor.collectives import copy_to_tp
from fastlm.parallel.tensor.layout import Part, split_parts
from fastlm.parallel.tensor.linear import (
    ColumnParallelLinear,
    GQAColumnParallelLinear,
    RowParallelLinear,
    _take_rows,
    _tp,
    sum_grad_over_tp,
)


def _whole(kind: str, t: torch.Tensor, dim: int = 0) -> list[Part]:
    """The parts of a tensor every tp rank holds whole."""
    return [Part(kind, dim, 0, t.shape[dim], 0, t.shape[dim])]


def _param(t: torch.Tensor, parts: list[Part], group=None) -> nn.Parameter:
    """A trainable adapter parameter holding `parts` of t; its gradient summed over tp when group is given."""
    p = nn.Parameter(_take_rows(t.detach(), parts).clone())
    p._tp_parts = parts
    if group is not None:
        sum_grad_over_tp(p, group)
    return p


def _adapt(layer: nn.Module, lora: nn.Module, dropout: nn.Module) -> None:
    layer.rank, layer.alpha, layer.scale = lora.rank, lora.alpha, lora.scale
    layer.lora_dropout = dropout  # (the base's requires_grad: parallelize_tp keeps what it was)


class ColumnParallelLoRALinear(ColumnParallelLinear):
    """A column-parallel base plus adapters: A whole (gradient summed over tp), B split like the weight."""

    @classmethod
    def from_lora(cls, lora: nn.Module, dropout: nn.Module, parts=None, **kwargs) -> "ColumnParallelLoRALinear":
        layer = cls.from_linear(lora, parts=parts, **kwargs)
        _adapt(layer, lora, dropout)
        names = parts or [(None, lora.out_features)]
        layer.lora_A = _param(lora.lora_A, _whole("lora_A", lora.lora_A), layer.group)
        layer.lora_B = _param(lora.lora_B, split_parts(names, "lora_B", 0, layer.tp_size, layer.tp_rank))
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mode == "replicated":
            x = copy_to_tp(x, self.group)
        return adapted_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale, self.lora_dropout(x))


class GQAColumnParallelLoRALinear(GQAColumnParallelLinear):
    """The GQA qkv (fewer kv heads than tp ranks) plus adapters: A whole, B's q rows split, its k and v
    rows whole like kv_weight (`lora_B_kv`); A's and lora_B_kv's gradients are summed over tp."""

    @classmethod
    def from_lora(cls, lora: nn.Module, dropout: nn.Module, **kwargs) -> "GQAColumnParallelLoRALinear":
        layer = cls.from_linear(lora, **kwargs)
        _adapt(layer, lora, dropout)
        q = layer.weight.shape[0] * layer.tp_size  # n_head * head_dim (q heads split evenly)
        kv = (lora.out_features - q) // 2
        layer.lora_A = _param(lora.lora_A, _whole("lora_A", lora.lora_A), layer.group)
        layer.lora_B = _param(lora.lora_B[:q], split_parts([("q", q)], "lora_B", 0, layer.tp_size, layer.tp_rank))
        layer.lora_B_kv = _param(lora.lora_B[q:], [Part("lora_B[k]", 0, 0, kv, 0, kv),
                                                   Part("lora_B[v]", 0, kv, kv, 0, kv)], layer.group)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_mode == "replicated":
            x = copy_to_tp(x, self.group)
        lora_x = self.lora_dropout(x)  # one mask for the q and the k/v rows (the same input)
        rows = self.kv_rows()
        q = adapted_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale, lora_x)
        k_v = adapted_linear(x, self.kv_weight.index_select(0, rows),
                             self.kv_bias.index_select(0, rows) if self.kv_bias is not None else None,
                             self.lora_A, self.lora_B_kv.index_select(0, rows), self.scale, lora_x)
        return torch.cat([q, k_v], dim=-1)


class RowParallelLoRALinear(RowParallelLinear):
    """A row-parallel base plus adapters: A split along the input like the weight, B whole (gradient
    summed over tp); the adapter's partial output joins the base's before their one reduction."""

    @classmethod
    def from_lora(cls, lora: nn.Module, dropout: nn.Module, **kwargs) -> "RowParallelLoRALinear":
        layer = cls.from_linear(lora, **kwargs)
        _adapt(layer, lora, dropout)
        layer.lora_A = _param(lora.lora_A, split_parts([(None, lora.in_features)], "lora_A", 1,
                                                       layer.tp_size, layer.tp_rank))
        layer.lora_B = _param(lora.lora_B, _whole("lora_B", lora.lora_B), layer.group)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = adapted_linear(x, self.weight, None, self.lora_A, self.lora_B, self.scale, self.lora_dropout(x))
        return self.sum_partial(y)


def _int8_shard(cls, lora: Int8LoRALinear, dropout: nn.Module, in_features: int, out_features: int,
                parts: dict[str, list[Part]]) -> Int8LoRALinear:
    """An Int8LoRALinear of this rank's piece (`parts` of the int8 weight, its scales and bias) of `lora`."""
    if lora.group_size is not None or lora.smooth_scale is not None:
        raise ValueError("parallelize_tp: an int8 LoRA base with group scales or smoothing is not split yet")
    layer = cls(in_features, out_features, lora.bias is not None, "w8a16", device=lora.weight.device)
    for kind in ("weight", "weight_scale", "bias"):
        if getattr(lora, kind) is not None:
            t = _take_rows(getattr(lora, kind), parts[kind]).clone()
            t._tp_parts = parts[kind]
            setattr(layer, kind, t)  # the registered buffer, replaced
    layer.activation = lora.activation
    _adapt(layer, lora, dropout)
    return layer


class ColumnParallelInt8LoRALinear(Int8LoRALinear):
    """An int8 base's output rows (each fused part split) with its adapters, A whole and B split."""

    @classmethod
    def from_lora(cls, lora: Int8LoRALinear, dropout: nn.Module, *, group, parts=None,
                  input_mode: str = "replicated") -> "ColumnParallelInt8LoRALinear":
        tp, rank = _tp(group)
        names = parts or [(None, lora.out_features)]
        split = {kind: split_parts(names, kind, 0, tp, rank) for kind in ("weight", "weight_scale", "bias", "lora_B")}
        layer = _int8_shard(cls, lora, dropout, lora.in_features, sum(p.local_len for p in split["weight"]), split)
        layer.group, layer.input_mode, layer.tp_size, layer.tp_rank = group, input_mode, tp, rank
        layer.lora_A = _param(lora.lora_A, _whole("lora_A", lora.lora_A), group)
        layer.lora_B = _param(lora.lora_B, split["lora_B"])
        return layer

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        if self.input_mode == "replicated":
            x = copy_to_tp(x, self.group)
        return super().forward(x, activation)


class RowParallelInt8LoRALinear(Int8LoRALinear):
    """An int8 base's input columns (its scales whole) with its adapters, A split and B whole; the base's
    and the adapter's partial outputs are summed once, then the bias is added."""

    @classmethod
    def from_lora(cls, lora: Int8LoRALinear, dropout: nn.Module, *, group,
                  sequence_parallel: bool = False) -> "RowParallelInt8LoRALinear":
        tp, rank = _tp(group)
        split = {"weight": split_parts([(None, lora.in_features)], "weight", 1, tp, rank),
                 "weight_scale": _whole("weight_scale", lora.weight_scale),
                 "bias": _whole("bias", lora.bias) if lora.bias is not None else None}
        layer = _int8_shard(cls, lora, dropout, split["weight"][0].local_len, lora.out_features, split)
        layer.group, layer.sequence_parallel, layer.tp_size, layer.tp_rank = group, sequence_parallel, tp, rank
        layer.lora_A = _param(lora.lora_A, split_parts([(None, lora.in_features)], "lora_A", 1, tp, rank))
        layer.lora_B = _param(lora.lora_B, _whole("lora_B", lora.lora_B), group)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return RowParallelLinear.sum_partial(self, self.adapted(x, None))  # the one reduction, then + bias
