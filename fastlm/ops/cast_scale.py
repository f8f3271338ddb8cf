"""cast_scale: out = scale * x converted to out's dtype, in one pass (fp32 math).

Data parallelism uses it to write fp32 gradients into 16-bit communication buffers (with the
averaging weight folded in) and to bring the reduced result back into the fp32 buffer.
CPU tensors run the C++ kernel (csrc/cpu/cast_scale.cpp), CUDA tensors the Triton one
(kernels/cast_scale.py), other dtypes and FASTLM_BACKEND=reference the plain-torch reference.
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_cast_scale as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import register_op


def _triton():
    from fastlm.kernels import cast_scale as triton_cast_scale

    return triton_cast_scale.cast_scale_


register_op("cast_scale_", reference=reference.cast_scale_, triton=_triton, fake=lambda out, x, scale: None)


def cast_scale(x: torch.Tensor, scale: float = 1.0, *, out: torch.Tensor | None = None,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """Returns `out` (or a new tensor of x's shape in `dtype`) = scale * x; no autograd."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"cast_scale: x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if out is None:
        out = torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device)
    elif dtype is not None and out.dtype != dtype:
        raise ValueError(f"cast_scale: out is {out.dtype} but dtype={dtype}")
    if out.numel() != x.numel():
        raise ValueError(f"cast_scale: out has {out.numel()} elements, x has {x.numel()}")
    if out.device != x.device:
        raise ValueError(f"cast_scale: out is on {out.device} but x is on {x.device}")
    if not out.is_contiguous() or not x.is_contiguous():
        raise ValueError("cast_scale: x and out must be contiguous")
    scale = float(scale)
    with torch.no_grad():
        if use_reference(x, out):
            reference.cast_scale_(out, x, scale)
        else:
            torch.ops.fastlm.cast_scale_(out, x, scale)
    return out
