"""RMSNorm and LayerNorm over the last dimension: fp32/bf16/fp16 inputs, fp32 statistics.

CPU tensors run the C++ kernels (csrc/cpu/norms.cpp), CUDA tensors the Triton ones
(kernels/norms.py), anything else (fp64, FASTLM_BACKEND=reference) the plain-torch reference.
"""
from __future__ import annotations

import torch

from fastlm.ops import reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import call_op, register_backward_op, register_op

# ---------------------------------------------------------------- registration (see _library.py)


def _triton(name: str):
    def launcher():
        from fastlm.kernels import norms as triton_norms

        return getattr(triton_norms, name)

    return launcher


def _stat(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[:-1], dtype=torch.float32)


register_op(
    "rms_norm_fwd", reference=reference.rms_norm_fwd, triton=_triton("rms_norm_fwd"),
    fake=lambda x, weight, eps, out_dtype=None: (torch.empty_like(x, dtype=out_dtype or x.dtype), _stat(x)))
register_op(
    "rms_norm_bwd", reference=reference.rms_norm_bwd, triton=_triton("rms_norm_bwd"),
    fake=lambda grad_y, x, weight, rstd: (torch.empty_like(x), torch.empty_like(weight)))


def _triton_add_rms(name: str):  # CUDA: the Triton RMSNorm kernels around a torch add (not fused there)
    def launcher():
        from fastlm.kernels import norms as triton_norms

        if name == "fwd":
            def fwd(x, branch, weight, eps, out_dtype=None):
                x_sum = torch.add(x, branch).to(x.dtype)
                return (x_sum, *triton_norms.rms_norm_fwd(x_sum, weight, eps, out_dtype))
            return fwd

        def bwd(grad_sum, grad_y, x_sum, weight, rstd, branch_dtype):
            grad_norm, grad_w = triton_norms.rms_norm_bwd(grad_y, x_sum, weight, rstd)
            total = grad_sum + grad_norm
            return total, total.to(branch_dtype), grad_w
        return bwd

    return launcher


register_op(
    "add_rms_norm_fwd", reference=reference.add_rms_norm_fwd, triton=_triton_add_rms("fwd"),
    fake=lambda x, branch, weight, eps, out_dtype=None: (
        torch.empty_like(x), torch.empty_like(x, dtype=out_dtype or x.dtype), _stat(x)))
register_op(
    "add_rms_norm_bwd", reference=reference.add_rms_norm_bwd, triton=_triton_add_rms("bwd"),
    fake=lambda grad_sum, grad_y, x_sum, weight, rstd, branch_dtype: (
        torch.empty_like(x_sum), torch.empty_like(x_sum, dtype=branch_dtype), torch.empty_like(weight)))
register_op(
    "layer_norm_fwd", reference=reference.layer_norm_fwd, triton=_triton("layer_norm_fwd"),
    fake=lambda x, weight, bias, eps: (torch.empty_like(x), _stat(x), _stat(x)))
register_op(
    "layer_norm_bwd", reference=reference.layer_norm_bwd, triton=_triton("layer_norm_bwd"),
    fake=lambda grad_y, x, weight, mean, rstd: (torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)))


def _rms_norm_setup(ctx, inputs, output):
    x, weight, _eps, *_out_dtype = inputs
    _y, rstd = output
    ctx.save_for_backward(x, weight, rstd)


def _rms_norm_backward(ctx, grad_y, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    grad_x, grad_weight = torch.ops.fastlm.rms_norm_bwd(grad_y, x, weight, rstd)
    return grad_x, grad_weight, None, None


def _add_rms_norm_setup(ctx, inputs, output):
    _x, branch, weight, _eps, *_out_dtype = inputs
    x_sum, _y, rstd = output
    ctx.save_for_backward(x_sum, weight, rstd)
    ctx.branch_dtype = branch.dtype


def _add_rms_norm_backward(ctx, grad_sum, grad_y, _grad_rstd):
    x_sum, weight, rstd = ctx.saved_tensors
    grad_x, grad_branch, grad_weight = torch.ops.fastlm.add_rms_norm_bwd(grad_sum, grad_y, x_sum, weight, rstd,
                                                                         ctx.branch_dtype)
    return grad_x, grad_branch, grad_weight, None, None


def _layer_norm_setup(ctx, inputs, output):
    x, weight, _bias, _eps = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)


def _layer_norm_backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, weight, mean, rstd = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = torch.ops.fastlm.layer_norm_bwd(grad_y, x, weight, mean, rstd)
    return grad_x, grad_weight, grad_bias, None


torch.library.register_autograd("fastlm::rms_norm_fwd", _rms_norm_backward, setup_context=_rms_norm_setup)
torch.library.register_autograd("fastlm::layer_norm_fwd", _layer_norm_backward, setup_context=_layer_norm_setup)
torch.library.register_autograd("fastlm::add_rms_norm_fwd", _add_rms_norm_backward, setup_context=_add_rms_norm_setup)
register_backward_op("rms_norm_bwd")
register_backward_op("add_rms_norm_bwd")
register_backward_op("layer_norm_bwd")

# ---------------------------------------------------------------- the public functions


def _check(op: str, x: torch.Tensor, **params: torch.Tensor | None) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a tensor, got {type(x).__name__}")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: x must be floating point, got {x.dtype}")
    n = x.shape[-1]
    for name, p in params.items():
        if p is None:
            continue
        if p.dim() != 1 or p.shape[0] != n:
            raise ValueError(f"{op}: {name} must have shape ({n},) to match x's last dimension, got {tuple(p.shape)}")
        if p.device != x.device:
            raise ValueError(f"{op}: {name} is on {p.device} but x is on {x.device}")
        if not p.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {p.dtype}")
    return n


def rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, eps: float = 1e-6,
             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = x / sqrt(mean(x^2, -1) + eps) * weight, in out_dtype (default x's dtype; fp32 math, one rounding).

    out_dtype = the autocast dtype lets a pre-norm block hand its Linears the 16-bit input they would
    cast to anyway: one rounding instead of an fp32 write, a cast, and the gradient cast back."""
    n = _check("rms_norm", x, weight=weight)
    if out_dtype is not None and out_dtype not in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        raise TypeError(f"rms_norm: out_dtype must be a floating dtype, got {out_dtype}")
    if weight is None:
        weight = x.new_ones(n)
    if out_dtype == x.dtype:
        out_dtype = None
    if use_reference(x, weight) or out_dtype == torch.float64:
        return reference.rms_norm_fwd(x, weight, eps, out_dtype)[0]
    return call_op(torch.ops.fastlm.rms_norm_fwd, x, weight, float(eps), out_dtype)[0]


def add_rms_norm(x: torch.Tensor, branch: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6,
                 out_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x + branch, rms_norm(x + branch)) in one pass: a pre-norm block's residual add and the next norm.

    The sum is in x's dtype (the residual stream's; branch may be a 16-bit Linear output under autocast:
    converted in the kernel's rows, not into a temporary); y in out_dtype as rms_norm's. The backward
    returns the residual gradient and the branch's (in branch's dtype) from one pass."""
    _check("add_rms_norm", x, weight=weight)
    if not isinstance(branch, torch.Tensor) or branch.shape != x.shape:
        raise ValueError(f"add_rms_norm: branch must be a tensor of x's shape {tuple(x.shape)}, "
                         f"got {tuple(getattr(branch, 'shape', ()))}")
    if not branch.is_floating_point() or branch.device != x.device:
        raise TypeError(f"add_rms_norm: branch must be floating point on {x.device}, "
                        f"got {branch.dtype} on {branch.device}")
    if torch.promote_types(x.dtype, branch.dtype) != x.dtype:
        raise TypeError(f"add_rms_norm: the sum is in x's dtype; branch ({branch.dtype}) must not be wider "
                        f"than x ({x.dtype})")
    if out_dtype == x.dtype:
        out_dtype = None
    if use_reference(x, branch, weight) or out_dtype == torch.float64:
        x_sum, y, _ = reference.add_rms_norm_fwd(x, branch, weight, eps, out_dtype)
        return x_sum, y
    x_sum, y, _ = call_op(torch.ops.fastlm.add_rms_norm_fwd, x, branch, weight, float(eps), out_dtype)
    return x_sum, y


def layer_norm(
    x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, eps: float = 1e-5
) -> torch.Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias over the last dimension, in x's dtype."""
    n = _check("layer_norm", x, weight=weight, bias=bias)
    if weight is None:
        weight = x.new_ones(n)
    if bias is None:
        bias = x.new_zeros(n, dtype=weight.dtype)
    if use_reference(x, weight, bias):
        return reference.layer_norm_fwd(x, weight, bias, eps)[0]
    return call_op(torch.ops.fastlm.layer_norm_fwd, x, weight, bias, float(eps))[0]
