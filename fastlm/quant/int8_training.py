"""Int8 training with SwitchBack linears (Wortsman et al., 2023, "Stable and low-precision training").

    apply_int8_training(model)          # config: [model] linear = "int8_train"

Forward  y  = X W^T: X int8 per token (row), W int8 per output channel; int32 accumulation.
Backward dX = G W:   G int8 per token (row), W int8 per input channel (the scale must not vary
                     along the contracted dimension, which is now W's output dimension).
Backward dW = G^T X: in the compute dtype (bf16/fp16 under autocast, else fp32): the sum over all
                     tokens is where int8 errors would accumulate, so it stays 16-bit (SwitchBack).
The parameters stay fp32 (and are the same objects: build the optimizer after applying this);
the state dict is an nn.Linear's, so checkpoints and model.safetensors are unchanged.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from fastlm import ops
from fastlm.quant.modules import select_linears, set_submodule


def _float_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b in their dtype, with fastlm's 16-bit GEMM where it exists (torch's bf16 CPU GEMM is slow)."""
    matmul = getattr(ops, "matmul", None)
    if matmul is not None and a.dtype in (torch.bfloat16, torch.float16):
        return matmul(a.contiguous(), b)
    return a @ b


class SwitchBackMatmul(torch.autograd.Function):
    """x2 (M, K) in the compute dtype, weight (N, K), bias (N,) or None -> (M, N) in the compute dtype."""

    @staticmethod
    def forward(ctx, x2, weight, bias):
        xq, xs = ops.quantize_per_token(x2)
        wq, ws = ops.quantize_per_channel(weight.detach())
        ctx.save_for_backward(x2, weight)
        ctx.bias_dtype = None if bias is None else bias.dtype
        return ops.int8_matmul(xq, wq.t(), xs, ws, None if bias is None else bias.detach(), out_dtype=x2.dtype)

    @staticmethod
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            gq, gs = ops.quantize_per_token(grad)
            wtq, wts = ops.quantize_per_channel(weight.detach().t())  # (K, N), one scale per input channel
            grad_x = ops.int8_matmul(gq, wtq.t(), gs, wts, out_dtype=x2.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = _float_matmul(grad.t().to(x2.dtype), x2).to(weight.dtype)
        if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=0, dtype=torch.float32).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b


class Int8TrainLinear(nn.Linear):
    """An nn.Linear trained with SwitchBack int8 matmuls (same parameters and state dict)."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> "Int8TrainLinear":
        """Shares linear's parameters (and so a weight tied to an embedding)."""
        new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta")
        new.weight, new.bias = linear.weight, linear.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8TrainLinear: input has {x.shape[-1]} features, expected {self.in_features}")
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        lead = x.shape[:-1]
        y = SwitchBackMatmul.apply(x.reshape(-1, self.in_features).to(dtype), self.weight, self.bias)
        return y.reshape(*lead, self.out_features)


def apply_int8_training(model: nn.Module, skip: Iterable[str] | None = None) -> nn.Module:
    """Make every nn.Linear of `model` (but `skip`) an Int8TrainLinear, in place; returns model.

    skip defaults to ["lm_head"] when the model has one: the vocabulary projection feeds the loss
    directly and is the layer most sensitive to rounding, so it trains in full precision.
    """
    if skip is None:
        skip = ["lm_head"] if any(name == "lm_head" for name, _ in model.named_modules()) else []
    for name, linear in select_linears(model, skip, what="train in int8"):
        if not isinstance(linear, Int8TrainLinear):
            set_submodule(model, name, Int8TrainLinear.from_linear(linear))
    return model
