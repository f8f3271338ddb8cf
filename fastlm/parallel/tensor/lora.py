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
Every parameter carries `_tp_parts` (canonical keys `...qkv.lora_A`, `...qkv.lora_B[q]`, ...), so
checkpoints, full_state_dict and gradient clipping treat the adapters like the base weights.
"""
from __future__ import annotations

import torch
from torch import nn

from fastlm.nn.lora import adapted_linear
from fastlm.parallel.tensor.collectives import copy_to_tp
from fastlm.parallel.tensor.layout import Part, split_parts
from fastlm.parallel.tensor.linear import (
    ColumnParallelLinear,
    GQAColumnParallelLinear,
    RowParallelLinear,
    _take_rows,
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
