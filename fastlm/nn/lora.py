"""LoRA adapters (Hu et al. 2021), applied to a built model from outside:

    apply_lora(model, rank=8, alpha=16, targets=("attn", "mlp"))   # base frozen, adapters trainable
    merge_lora(model)                                              # W += (alpha / rank) B A; plain Linears again
    apply_lora(model, base="int8")                                 # the frozen base held in int8 (W8A16, QLoRA-style)

A LoRALinear is a Linear (same `weight`/`bias` keys, so checkpoints, HF conversion and the fused
cross-entropy head still see a linear) with two more parameters, `lora_A` (rank, in) drawn like
PEFT's (Kaiming-uniform) and `lora_B` (out, rank) zero, so an adapted model starts equal to its base.
Its forward is fastlm.ops.matmul with the LoRA epilogue: x W^T + b + s (drop(x) A^T) B^T.

base="int8" puts an Int8LoRALinear in place instead: the frozen weight quantized per output channel
(fastlm.nn.Int8Linear, w8a16: int8 weights, 16/32-bit activations, dequantized on the fly by
fastlm.ops.int8_weight_matmul, which is differentiable in x), plus the same adapters. Its state dict
holds `weight` (int8) and `weight_scale` instead of the float weight.
"""
from __future__ import annotations

import math
import re

import torch
from torch import nn

from fastlm import ops
from fastlm.nn.int8_linear import Int8Linear
from fastlm.nn.linear import Linear, _autocast_dtype

# targets -> the linears of a Transformer block they name (GPT and encoder blocks use the same names)
TARGET_LAYERS = {"attn": ("attn.qkv", "attn.proj"), "mlp": ("mlp.fc", "mlp.proj")}
_BLOCK_LINEAR = re.compile(r"(?:^|\.)blocks\.(\d+)\.(attn\.qkv|attn\.proj|mlp\.fc|mlp\.proj)$")


def adapted_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                   lora_b: torch.Tensor, scale: float, lora_x: torch.Tensor, activation: str | None = None):
    """activation(x W^T + b + scale (lora_x A^T) B^T) in one fastlm.ops.matmul; lora_x is x, or x after
    the adapter's dropout. Honours torch.autocast as F.linear would (custom ops are not autocast)."""
    dtype = _autocast_dtype(x)
    same = lora_x is x
    if dtype is not None:
        x, weight, lora_a, lora_b, lora_x = (t.to(dtype) for t in (x, weight, lora_a, lora_b, lora_x))
        bias = bias.to(dtype) if bias is not None else None
    return ops.matmul(x, weight.t(), bias, activation, lora_a=lora_a, lora_b=lora_b, lora_scale=scale,
                      lora_x=None if same else lora_x)


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
        return adapted_linear(x, self.weight, self.bias, self.lora_A, self.lora_B, self.scale,
                              self.lora_dropout(x), activation or self.activation)

    def merged_weight(self) -> torch.Tensor:
        """W + s B A (the weight of the equivalent plain linear)."""
        with torch.no_grad():
            return (self.weight.float() + self.scale * (self.lora_B.float() @ self.lora_A.float())).to(self.weight.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, alpha={self.alpha}"


class Int8LoRALinear(Int8Linear):
    """A w8a16 Int8Linear (frozen int8 base) plus trainable LoRA adapters; built by apply_lora(base="int8")."""

    fuses_activation = False

    @classmethod
    def from_linear_with_adapter(cls, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0):
        layer = cls.from_linear(base, "w8a16")
        layer.activation = getattr(base, "activation", None)
        layer.rank, layer.alpha, layer.scale = rank, alpha, alpha / rank
        w = base.weight
        layer.lora_A = nn.Parameter(torch.empty(rank, layer.in_features, device=w.device, dtype=w.dtype))
        layer.lora_B = nn.Parameter(torch.zeros(layer.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(layer.lora_A, a=math.sqrt(5))
        layer.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        return layer

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        y = self.adapted(x, self.bias)
        act = activation or self.activation
        if act is not None:
            from fastlm.nn.activations import get_activation

            y = get_activation(act)(y)
        return y

    def adapted(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x W^T + bias + s (drop(x) A^T) B^T: the int8 GEMM (autocast's dtype under autocast) plus the
        adapter (bias None: a tensor-parallel partial sum, whose bias is added after the reduction)."""
        x16 = x.to(torch.get_autocast_dtype(x.device.type)) if torch.is_autocast_enabled(x.device.type) else x
        y = ops.int8_weight_matmul(x16.reshape(-1, self.in_features), self.weight, self.weight_scale, bias,
                                   group_size=self.group_size)
        xa = self.lora_dropout(x).to(y.dtype).reshape(-1, self.in_features) @ self.lora_A.to(y.dtype).t()
        # addmm (not in place: autograd); y itself is not saved for the backward, so it is freed after.
        y = torch.addmm(y, xa, self.lora_B.to(y.dtype).t(), alpha=self.scale)
        return y.reshape(*x.shape[:-1], self.out_features)

    def merged_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return self.dequantized_weight() + self.scale * (self.lora_B.float() @ self.lora_A.float())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", rank={self.rank}, alpha={self.alpha}"


ADAPTED = (LoRALinear, Int8LoRALinear)


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
               targets=("attn", "mlp"), freeze: bool = True, base: str = "float") -> list[str]:
    """Freeze model's parameters (freeze=True) and put a LoRALinear (base="int8": an Int8LoRALinear) in
    place of every targeted block linear. Returns the adapted layers' names; a model without such
    layers is a ValueError."""
    if base not in ("float", "int8"):
        raise ValueError(f"LoRA base {base!r}: expected \"float\" or \"int8\"")
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
        _adapt_layer(model, name, rank, alpha, dropout, base)
    return names


def _adapt_layer(model: nn.Module, name: str, rank: int, alpha: float, dropout: float, base: str) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    layer = getattr(parent, child)
    if isinstance(layer, ADAPTED):
        raise ValueError(f"{name} has a LoRA adapter already (merge it first: fastlm.nn.lora.merge_lora)")
    setattr(parent, child, LoRALinear(layer, rank, alpha, dropout) if base == "float" else
            Int8LoRALinear.from_linear_with_adapter(layer, rank, alpha, dropout))


def adapt_like(plain: nn.Module, model: nn.Module, names: list[str] | None = None) -> nn.Module:
    """Put adapters into the plain model `plain` where `model` (the same architecture, possibly split
    over tp ranks, or a pipeline stage of it) has them, with its rank, alpha, dropout and base; returns
    plain. names: the layers to adapt instead (a pipeline's: every stage's; apply_lora gives all the
    same settings). Its parameters are then ready for `model`'s gathered state dict; with adapters, only
    they train (as after apply_lora)."""
    adapted = {name: layer for name, layer in model.named_modules()
               if isinstance(getattr(layer, "lora_A", None), torch.Tensor)}
    if not adapted:
        return plain
    like = next(iter(adapted.values()))
    base = "int8" if like.weight.dtype == torch.int8 else "float"
    for p in plain.parameters():
        p.requires_grad_(False)
    for name in adapted if names is None else names:
        _adapt_layer(plain, name, like.rank, like.alpha, getattr(like.lora_dropout, "p", 0.0), base)
    return plain


def lora_layers(model: nn.Module) -> dict[str, LoRALinear | Int8LoRALinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, ADAPTED)}


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put a plain Linear back (in place; returns model).
    The merged weights are trainable again, as the model was before apply_lora."""
    for name, layer in lora_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        dtype = layer.lora_A.dtype  # the float dtype (an int8 base's weight is int8)
        plain = Linear(layer.in_features, layer.out_features, bias=layer.bias is not None,
                       device=layer.weight.device, dtype=dtype, activation=layer.activation)
        plain.weight = nn.Parameter(layer.merged_weight().to(dtype))
        if layer.bias is not None:
            plain.bias = nn.Parameter(layer.bias.detach().to(dtype).clone())
        setattr(model.get_submodule(parent_name) if parent_name else model, child, plain)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def merge_state_dict(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A saved LoRA model's tensors with every `X.lora_A` / `X.lora_B` folded into `X.weight` (an int8
    base's `X.weight` and `X.weight_scale` dequantized first: the result is a float model)."""
    out = {k: v for k, v in state.items() if not k.endswith((".lora_A", ".lora_B"))}
    for key in state:
        if key.endswith(".lora_A"):
            layer = key[: -len(".lora_A")]
            a, b, w = state[key], state[layer + ".lora_B"], state[layer + ".weight"].double()
            if state[layer + ".weight"].dtype == torch.int8:  # w8a16 base: per-channel or per-group scales
                s = state[layer + ".weight_scale"].double().reshape(w.shape[0], -1)
                w = (w.reshape(w.shape[0], s.shape[1], -1) * s[..., None]).reshape(w.shape)
                del out[layer + ".weight_scale"]
                if layer + ".bias" in out:
                    out[layer + ".bias"] = out[layer + ".bias"].to(a.dtype)
            out[layer + ".weight"] = (w + scale * (b.double() @ a.double())).to(a.dtype).contiguous()
    return out
