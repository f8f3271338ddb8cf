"""Quantization-aware training: fake-quantized linears (straight-through estimator), then real int8.

    prepare_qat(model)          # every nn.Linear -> FakeQuantLinear (same parameters: build the optimizer after)
    ... train ...
    convert(model)              # every FakeQuantLinear -> Int8Linear, computing what the fake model computed

The fake quantization is the real one: fastlm.ops.quantize_per_token / quantize_per_channel, then
q * scale. So the int8 GEMM of the converted layer multiplies the same integers by the same scales
and differs from the fake-quantized model only by float rounding. The gradient passes straight
through the rounding (absmax scaling clips nothing).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from fastlm import ops
from fastlm.nn.int8_linear import Int8Linear, check_scheme
from fastlm.quant.modules import select_linears, set_submodule


def fake_quantize_per_token(x: torch.Tensor) -> torch.Tensor:
    """x rounded to its per-token int8 grid, with the identity as gradient."""
    q, scale = ops.quantize_per_token(x.detach())
    return x + ((q.float() * scale).to(x.dtype) - x).detach()


def fake_quantize_per_channel(w: torch.Tensor, group_size: int | None = None) -> torch.Tensor:
    """w (N, K) rounded to its per-channel (or per-group) int8 grid, with the identity as gradient."""
    q, scale = ops.quantize_per_channel(w.detach(), group_size)
    n, k = w.shape
    scale = scale.reshape(n, -1, 1)
    deq = (q.float().reshape(n, scale.shape[1], -1) * scale).reshape(n, k)
    return w + (deq.to(w.dtype) - w).detach()


class FakeQuantLinear(nn.Linear):
    """An nn.Linear that computes with fake-quantized weights (and activations for w8a8)."""

    scheme: str = "w8a8"
    group_size: int | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear, scheme: str = "w8a8", group_size: int | None = None) -> "FakeQuantLinear":
        """Shares linear's parameters (and so a weight tied to an embedding)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        new.scheme, new.group_size = check_scheme(scheme), group_size
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):  # quantize what the int8 layer will see
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.scheme == "w8a8":
            x = fake_quantize_per_token(x)
        return F.linear(x, fake_quantize_per_channel(self.weight, self.group_size), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", scheme={self.scheme!r}"


def prepare_qat(model: nn.Module, scheme: str = "w8a8", skip: Iterable[str] = (),
                group_size: int | None = None) -> nn.Module:
    """Replace, in place, every nn.Linear not in `skip` by a FakeQuantLinear sharing its parameters."""
    check_scheme(scheme)
    if group_size is not None and scheme != "w8a16":
        raise ValueError(f"group_size = {group_size!r}: only available with scheme 'w8a16'")
    linears = select_linears(model, skip, what="prepare for QAT")
    already = [n for n, m in linears if isinstance(m, FakeQuantLinear)]
    if already:
        raise ValueError(f"prepare_qat: the model is prepared already ({already[0]} is a FakeQuantLinear)")
    for name, linear in linears:
        set_submodule(model, name, FakeQuantLinear.from_linear(linear, scheme, group_size))
    return model


@torch.no_grad()
def convert(model: nn.Module) -> nn.Module:
    """Replace, in place, every FakeQuantLinear by the Int8Linear it simulated; returns model."""
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if not found:
        raise ValueError("convert: the model has no FakeQuantLinear modules (call prepare_qat first)")
    for name, fake in found:
        set_submodule(model, name, Int8Linear.from_linear(fake, fake.scheme, fake.group_size))
    return model
