"""LoRA adapters (Hu et al. 2021), applied to a built model from outside:

    apply_lora(model, rank=8, alpha=16, targets=("attn", "mlp"))   # base frozen, adapters trainable
    merge_lora(model)                                              # W += (alpha / rank) B A; plain Linears again

A LoRALinear is a Linear (same `weight`/`bias` keys, so checkpoints, HF conversion and the fused
cross-entropy head still see a linear) with two more parameters, `lora_A` (rank, in) drawn like
PEFT's (Kaiming-uniform) and `lora_B` (out, rank) zero, so an adapted model starts equal to its base.
Its forward is fastlm.ops.matmul with the LoRA epilogue: x W^T + b + s (drop(x) A^T) B^T.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from fastlm import ops
from fastlm.nn.linear import Linear, _autocast_dtype

# targets -> the linears of a Transformer block they name (GPT and encoder blocks use the same names)
TARGET_LAYERS = {"attn": ("attn.qkv", "attn.proj"), "mlp": ("mlp.fc", "mlp.proj")}
_BLOCK_LINEAR = re.compile(r"(?:^|\.)blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc|mlp\.proj)$")


class LoRALinear(Linear):
    """A frozen-base linear plus a trainable low-rank update: y = x W^T + b + (alpha / rank) (x A^T) B^T."""

    fuses_activation = False  # the activation follows the adapter's sum: the MLP applies it

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the same Parameters (shared, not copied)
        self.activation = getattr(base, "activation", None)
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's (and nn.Linear's) default
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        weight, bias, a, b = self.weight, self.bias, self.lora_A, self.lora_B
        dtype = _autocast_dtype(x)
        if dtype is not None:  # custom ops are not autocast: cast as F.linear would
            x, weight, a, b = x.to(dtype), weight.to(dtype), a.to(dtype), b.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        lora_x = self.lora_dropout(x)
        return ops.matmul(x, weight.t(), bias, activation or self.activation, lora_a=a, lora_b=b,
                          lora_scale=self.scale, lora_x=None if lora_x is x else lora_x)

    def merged_weight(self) -> torch.Tensor:
        """W + s B A (the weight of the equivalent plain linear)."""
        with torch.no_grad():
            return (self.weight.float() + self.scale * (self.lora_B.float() @ self.lora_A.float())).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, alpha={self.alpha}"


def lora_layer_names(model: nn.Module, targets=("attn", "mlp")) -> list[str]:
    """Names of the block linears `targets` select in model (fastlm GPT / encoder naming)."""
    unknown = [t for t in targets if t not in TARGET_LAYERS]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}: expected some of {sorted(TARGET_LAYERS)}")
    wanted = {layer for t in targets for layer in TARGET_LAYERS[t]}
    names = []
    for name, module in model.named_modules():
        m = _BLOCK_LINEAR.search(name)
        if m is not None and m.group(2) in wanted and isinstance(module, nn.Linear):
            names.append(name)
    return names


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets=("attn", "mlp"), freeze: bool = True) -> list[str]:
    """Freeze model's parameters (freeze=True) and put a LoRALinear in place of every targeted block
    linear. Returns the adapted layers' names; a model without such layers is a ValueError."""
    if rank < 1:
        raise ValueError(f"LoRA rank {rank}: expected >= 1")
    names = lora_layer_names(model, targets)
    if not names:
        raise ValueError(f"{type(model).__name__} has no Transformer block linears to adapt "
                         f"(LoRA adapts GPT and encoder blocks' {', '.join(targets)} layers)")
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        base = getattr(parent, child)
        if isinstance(base, LoRALinear):
            raise ValueError(f"{name} has a LoRA adapter already (merge it first: fastlm.nn.lora.merge_lora)")
        setattr(parent, child, LoRALinear(base, rank, alpha, dropout))
    return names


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put a plain Linear back (in place; returns model).
    The merged weights are trainable again, as the model was before apply_lora."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        plain = Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device=layer.weight.device, dtype=layer.weight.dtype, activation=layer.activation)
        plain.weight = nn.Parameter(layer.merged_weight())
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.detach().clone())
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merge_state_dict(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A saved LoRA model's tensors with every `X.lora_A` / `X.lora_B` folded into `X.weight`."""
    out = {k: v for k, v in state.items() if not k.endswith((".lora_A", ".lora_B"))}
    for key in state:
        if key.endswith(".lora_A"):
            layer = key[: -len(".lora_A")]
            a, b, w = state[key], state[layer + ".lora_B"], state[layer + ".weight"]
            out[layer + ".weight"] = (w.double() + scale * (b.double() @ a.double())).to(w.dtype).contiguous()
    return out
