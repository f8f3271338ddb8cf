"""Plain-PyTorch reference implementations of every fastlm op.

These are the oracle the tests compare the native and Triton kernels against, and the
path taken when no compiled kernel is available (or FASTLM_BACKEND=reference).
They compute in fp32 and return the input dtype, like the kernels do.
"""
from __future__ import annotations

import torch


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Upcast to the accumulation dtype: fp32, or fp64 for fp64 inputs."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None):
    """Returns (y, rstd) where rstd has shape x.shape[:-1] in fp32; y in out_dtype (default x's)."""
    xf = _acc(x)
    rstd = torch.rsqrt(xf.pow(2).mean(-1) + eps)
    y = xf * rstd.unsqueeze(-1) * _acc(weight)
    return y.to(out_dtype or x.dtype), rstd


def rms_norm_bwd(grad_out, x, weight, rstd):
    """Returns (grad_x, grad_weight)."""
    g = _acc(grad_out)
    xf = _acc(x)
    w = _acc(weight)
    r = rstd.unsqueeze(-1)
    xhat = xf * r
    gw = g * w
    n = x.shape[-1]
    grad_x = r * (gw - xhat * (gw * xhat).sum(-1, keepdim=True) / n)
    grad_w = (g * xhat).reshape(-1, n).sum(0)
    return grad_x.to(x.dtype), grad_w.to(weight.dtype)


def add_rms_norm_fwd(x, branch, weight, eps: float, out_dtype: torch.dtype | None = None):
    """Returns (x_sum, y, rstd): x_sum = x + branch in x's dtype, (y, rstd) = rms_norm_fwd(x_sum)."""
    x_sum = (_acc(x) + _acc(branch)).to(x.dtype)
    return (x_sum, *rms_norm_fwd(x_sum, weight, eps, out_dtype))


def add_rms_norm_bwd(grad_sum, grad_y, x_sum, weight, rstd, branch_dtype: torch.dtype):
    """Returns (grad_x, grad_branch, grad_weight): grad_x = grad_sum + rms_norm's input gradient."""
    grad_norm, grad_w = rms_norm_bwd(grad_y, x_sum, weight, rstd)
    total = _acc(grad_sum) + _acc(grad_norm)
    return total.to(x_sum.dtype), total.to(branch_dtype), grad_w


def layer_norm_fwd(x, weight, bias, eps: float):
    """Returns (y, mean, rstd); mean and rstd have shape x.shape[:-1] in fp32."""
    xf = _acc(x)
    mean = xf.mean(-1)
    var = (xf - mean.unsqueeze(-1)).pow(2).mean(-1)
    rstd = torch.rsqrt(var + eps)
    y = (xf - mean.unsqueeze(-1)) * rstd.unsqueeze(-1) * _acc(weight) + _acc(bias)
    return y.to(x.dtype), mean, rstd


def layer_norm_bwd(grad_out, x, weight, mean, rstd):
    """Returns (grad_x, grad_weight, grad_bias)."""
    g = _acc(grad_out)
    xf = _acc(x)
    n = x.shape[-1]
    r = rstd.unsqueeze(-1)
    xhat = (xf - mean.unsqueeze(-1)) * r
    gw = g * _acc(weight)
    c1 = (gw * xhat).sum(-1, keepdim=True) / n
    c2 = gw.sum(-1, keepdim=True) / n
    grad_x = r * (gw - xhat * c1 - c2)
    grad_w = (g * xhat).reshape(-1, n).sum(0)
    grad_b = g.reshape(-1, n).sum(0)
    return grad_x.to(x.dtype), grad_w.to(weight.dtype), grad_b.to(weight.dtype)
