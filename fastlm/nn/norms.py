"""Normalization modules. The math lives in fastlm.ops (native kernels + reference)."""
from __future__ import annotations

import torch
from torch import nn

from fastlm import ops


class RMSNorm(nn.Module):
    """autocast_output=True: under torch.autocast the output is in the autocast dtype (fp32 math, one
    rounding), for a norm whose output only feeds Linears (a pre-norm block's): they would cast it to
    that dtype anyway, and their input gradient then reaches the norm's backward without a cast back.
    Otherwise (post-norm: the output is the residual stream) the output keeps x's dtype."""

    def __init__(self, dim: int, eps: float = 1e-6, autocast_output: bool = False):
        super().__init__()
        self.eps = eps
        self.autocast_output = autocast_output
        self.weight = nn.Parameter(torch.ones(dim))

    def _out_dtype(self, x: torch.Tensor) -> torch.dtype | None:
        if self.autocast_output and torch.is_autocast_enabled(x.device.type):
            return torch.get_autocast_dtype(x.device.type)
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, self.eps, self._out_dtype(x))

    def add_forward(self, x: torch.Tensor, branch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x + branch, self(x + branch)) in one fused op (a pre-norm block's residual add and this norm)."""
        return ops.add_rms_norm(x, branch, self.weight, self.eps, self._out_dtype(x))

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class LayerNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, bias: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, bias={self.bias is not None}"
