"""Symmetric absmax int8 quantization in one pass: per token (activations), per channel or per group (weights).

    x_int8, scale = fastlm.ops.quantize_per_token(x)        # x (..., K) -> scale (..., 1)
    w_int8, scale = fastlm.ops.quantize_per_channel(w)      # w (N, K)   -> scale (N,)
    w_int8, scale = fastlm.ops.quantize_per_channel(w, group_size=128)   # scale (N, K // 128)

scale = absmax / 127 in fp32 and q = round(x / scale) in [-127, 127]; x ~= q * scale. Rules for
all-zero rows are in fastlm/ops/reference_int8.py. CPU tensors run the C++ kernel
(csrc/cpu/int8.cpp), CUDA tensors the Triton one (kernels/int8_quantize.py), other dtypes and
FASTLM_BACKEND=reference the plain-torch reference. No autograd (use fake quantization to train).
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_int8 as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import register_op


def _triton():
    from fastlm.kernels import int8_quantize as triton_int8_quantize

    return triton_int8_quantize.int8_quantize


def _fake(x, group_size):
    return (x.new_empty(x.shape, dtype=torch.int8),
            x.new_empty((x.shape[0], x.shape[1] // group_size), dtype=torch.float32))


# x (R, K) contiguous float -> (q (R, K) int8, scale (R, K // group_size) fp32).
register_op("int8_quantize", reference=reference.int8_quantize, triton=_triton, fake=_fake)


def _check_float(op: str, name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: {name} must be floating point, got {x.dtype}")


def _quantize_rows(x2d: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x2d = x2d.detach()  # no autograd: quantization is not differentiable (fake quantization trains)
    if not x2d.is_contiguous():
        x2d = x2d.contiguous()
    if use_reference(x2d):
        return reference.int8_quantize(x2d, group_size)
    return torch.ops.fastlm.int8_quantize(x2d, group_size)


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) float -> (x_int8 of x's shape, scale (..., 1) fp32), one scale per row (token)."""
    _check_float("quantize_per_token", "x", x)
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"quantize_per_token: x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    k = x.shape[-1]
    if x.dim() == 2:
        return _quantize_rows(x, k)
    q, scale = _quantize_rows(x.reshape(-1, k), k)
    return q.reshape(x.shape), scale.reshape(*x.shape[:-1], 1)


def quantize_per_channel(w: torch.Tensor, group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """w (N, K) float (an nn.Linear weight) -> (w_int8 (N, K), scale (N,) fp32), one scale per output channel.

    With group_size (dividing K): one scale per row and group of `group_size` columns, scale (N, K // group_size).
    """
    _check_float("quantize_per_channel", "w", w)
    if w.dim() != 2 or w.numel() == 0:
        raise ValueError(f"quantize_per_channel: w must be a non-empty 2-D (N, K) tensor, got shape {tuple(w.shape)}")
    k = w.shape[1]
    if group_size is None:
        q, scale = _quantize_rows(w, k)
        return q, scale.reshape(-1)
    group_size = check_group_size("quantize_per_channel", group_size, k)
    return _quantize_rows(w, group_size)


def check_group_size(op: str, group_size, k: int) -> int:
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise TypeError(f"{op}: group_size must be an int or None, got {type(group_size).__name__}")
    if group_size <= 0 or k % group_size != 0:
        raise ValueError(f"{op}: group_size={group_size} must be positive and divide K={k}")
    return group_size
