"""Plain-torch reference of the fused matmul: out = act(a @ b + bias), computed in fp32 (fp64 for
fp64 inputs) and rounded once to a's dtype. Differentiable by torch autograd; also the oracle of
the tests and the CPU/CUDA fallback of the registered ops."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# The activation names the kernels know (fastlm.ops.matmul maps aliases such as "gelu_new" here).
ACTIVATIONS = {
    "none": lambda h: h,
    "gelu": F.gelu,  # exact (erf)
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
    "silu": F.silu,
}


def _activation_grad(activation: str, x: torch.Tensor) -> torch.Tensor:
    """act'(x), written out: this also runs as a registered kernel, below autograd, where
    torch.autograd.grad cannot be used."""
    if activation == "none":
        return torch.ones_like(x)
    if activation == "gelu":
        cdf = 0.5 * (1.0 + torch.erf(x * 0.5 ** 0.5))
        return cdf + x * torch.exp(-0.5 * x * x) * (2.0 * torch.pi) ** -0.5
    if activation == "gelu_tanh":
        c = (2.0 / torch.pi) ** 0.5
        t = torch.tanh(c * (x + 0.044715 * x ** 3))
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * x * x)
    s = torch.sigmoid(x)  # silu
    return s * (1.0 + x * (1.0 - s))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def matmul_fwd(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None, activation: str):
    """(out, pre): pre = a @ b + bias (empty when activation is "none"), both in a's dtype."""
    ct = _compute_dtype(a.dtype)
    h = a.to(ct) @ b.to(ct)
    if bias is not None:
        h = h + bias.to(ct)
    pre = h.to(a.dtype) if activation != "none" else a.new_empty(0)
    return ACTIVATIONS[activation](h).to(a.dtype), pre


def matmul_bwd(grad_out, a, b, bias, pre, activation: str, needs_grad_a: bool, needs_grad_b: bool):
    """(grad_a, grad_b, grad_bias) from the saved pre-activation; unneeded ones come back empty."""
    ct = _compute_dtype(a.dtype)
    g = grad_out.to(ct)
    if activation != "none":
        g = g * _activation_grad(activation, pre.to(ct))
    empty = a.new_empty(0)
    grad_a = (g @ b.to(ct).t()).to(a.dtype) if needs_grad_a else empty
    grad_b = (a.to(ct).t() @ g).to(b.dtype) if needs_grad_b else b.new_empty(0)
    grad_bias = g.sum(0).to(bias.dtype) if bias is not None else empty
    return grad_a, grad_b, grad_bias
