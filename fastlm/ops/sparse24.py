"""2:4 sparse matrix product for inference on pruned models: y = x W^T + b with W stored compressed.

    values, meta = compress24(w)                       # w (N, K): <= 2 non-zeros per 4 input columns
    y = fastlm.ops.sparse24_matmul(x, values, meta, K, bias)   # x (..., K) -> (..., N), x's dtype

The format (fp32 values + 2-bit column offsets, ~0.53x the bytes of the dense fp32 weight) is
defined in fastlm/ops/reference_sparse24.py. CPU: C++ (csrc/cpu/sparse24.cpp; AVX-512 / AVX2 /
scalar chosen at run time, FASTLM_SPARSE24_KERNEL=avx512|avx2|scalar forces one). CUDA and other
dtypes: the reference (the weight decompressed, then a dense matmul). Differentiable in x and bias
(the weight is frozen).
"""
from __future__ import annotations

import math

import torch

from fastlm.ops import reference_sparse24 as reference
from fastlm.ops._backend import forced_backend
from fastlm.ops._library import register_op
from fastlm.ops.reference_sparse24 import compress24, decompress24

__all__ = ["sparse24_matmul", "compress24", "decompress24"]

register_op("sparse24_matmul", reference=reference.sparse24_matmul, triton=None,
            fake=lambda x, values, meta, in_features, bias: x.new_empty((x.shape[0], values.shape[0])))


def _setup(ctx, inputs, output):
    x, values, meta, in_features, bias = inputs
    ctx.save_for_backward(values, meta)
    ctx.in_features, ctx.has_bias = in_features, bias is not None


def _backward(ctx, grad_y):
    values, meta = ctx.saved_tensors
    grad_x = grad_y @ decompress24(values, meta, ctx.in_features).to(grad_y.dtype)
    return grad_x, None, None, None, grad_y.sum(0) if ctx.has_bias else None


torch.library.register_autograd("fastlm::sparse24_matmul", _backward, setup_context=_setup)


def sparse24_matmul(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, in_features: int,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) @ W^T + bias for W (N, K) = decompress24(values, meta, K); fp32 math, x's dtype out."""
    op = "sparse24_matmul"
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{op}: x must be a floating-point tensor")
    groups = -(-in_features // 4)
    if values.dim() != 2 or values.shape[1] != 2 * groups or values.dtype != torch.float32:
        raise ValueError(f"{op}: values must be fp32 (N, {2 * groups}) for K={in_features}, got "
                         f"{values.dtype} {tuple(values.shape)}")
    n = values.shape[0]
    if meta.dtype != torch.uint8 or tuple(meta.shape) != (n, -(-groups // 2)):
        raise ValueError(f"{op}: meta must be uint8 ({n}, {-(-groups // 2)}), got {meta.dtype} {tuple(meta.shape)}")
    if x.shape[-1] != in_features:
        raise ValueError(f"{op}: K mismatch: x has K={x.shape[-1]} but the weight has K={in_features}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"{op}: bias must have shape ({n},), got {tuple(bias.shape)}")
    lead = x.shape[:-1]
    x2d = x.reshape(math.prod(lead), in_features)
    if x.dtype == torch.float64 or forced_backend() == "reference":
        out = reference.sparse24_matmul(x2d, values, meta, in_features, bias)
    else:
        b = bias.float() if bias is not None else None
        out = torch.ops.fastlm.sparse24_matmul(x2d.float().contiguous(), values.contiguous(), meta.contiguous(),
                                               in_features, b).to(x.dtype)
    return out.reshape(*lead, n)
