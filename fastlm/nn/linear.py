"""Linear: torch.nn.Linear whose forward is fastlm.ops.matmul (fused bias + optional activation).

Same parameters and state-dict keys as nn.Linear (isinstance(m, nn.Linear) stays true), so
checkpoints, Hugging Face conversion and module-swapping code (tensor parallel, quantization)
treat it as a plain linear. Custom ops are not cast by torch.autocast, so forward does what
autocast would do for a linear: under autocast, input, weight and bias are cast to the autocast
dtype (the op then computes in fp32 and returns that dtype).
"""
from __future__ import annotations

import torch
from torch import nn

from fastlm import ops
from fastlm.ops.matmul import ACTIVATION_ALIASES


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device = x.device.type
    if x.is_floating_point() and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None) -> torch.Tensor:
    """activation(x @ weight.T + bias), honouring torch.autocast like F.linear."""
    dtype = _autocast_dtype(x)
    if dtype is not None:
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    return ops.matmul(x, weight.t(), bias, activation)


class Linear(nn.Linear):
    """nn.Linear computed by fastlm.ops.matmul; `activation` (None, "gelu", "gelu_tanh"/"gelu_new",
    "silu") is fused into the GEMM's epilogue. forward(x, activation=...) overrides it per call
    (the MLP fuses its activation into any layer whose `fuses_activation` is true)."""

    fuses_activation = True  # forward(x, activation=...) computes activation(x @ W.T + b) in one op

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None,
                 activation: str | None = None):
        if activation not in ACTIVATION_ALIASES:
            raise ValueError(f"Linear: unknown activation {activation!r}; expected None or one of "
                             f"{sorted(k for k in ACTIVATION_ALIASES if k is not None)}")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.activation = activation

    def forward(self, x: torch.Tensor, activation: str | None = None) -> torch.Tensor:
        return linear(x, self.weight, self.bias, activation or self.activation)

    def fused_cross_entropy(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of this layer's logits without storing them (fastlm.nn.head)."""
        if self.bias is not None:  # the fused kernel has no bias: compute the logits
            return ops.cross_entropy(self(hidden).flatten(0, -2), targets.flatten(), ignore_index=-100)
        return ops.linear_cross_entropy(hidden, self.weight, targets)

    def extra_repr(self) -> str:
        extra = f", activation={self.activation!r}" if self.activation else ""
        return super().extra_repr() + extra
