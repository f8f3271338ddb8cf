"""Plain-torch references of the int8 ops (fastlm/ops/int8.py); the kernels must match them.

Quantization (symmetric absmax, per row or per group of `group_size` columns):
    scale = absmax / 127 (fp32), q = clamp(round_half_even(x / scale), -127, 127)
    an all-zero group gets scale 1 (q = 0); a nonzero absmax below 127 * FLT_MIN gets scale FLT_MIN
    (absmax / 127 would underflow to 0 and x / scale would divide by zero).
int8_matmul: acc = a @ b in exact int32 arithmetic (int64 here, then int32, which is exact since
    |acc| <= 128 * 128 * K < 2^31 for K < 131072), then out = float(acc) * a_scale[m] * b_scale[n] + bias[n]
    in fp32, cast to out_dtype; with no scales and out_dtype=int32 the raw accumulators.
int8_weight_matmul: y = x @ (w * scale).T + bias with fp32 math, in x's dtype.
"""
from __future__ import annotations

import torch

FLT_MIN = torch.finfo(torch.float32).tiny
INT8_MAX = 127


def int8_quantize(x: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (R, K) float -> (q (R, K) int8, scale (R, K // group_size) fp32)."""
    rows, k = x.shape
    groups = x.reshape(rows, k // group_size, group_size).to(torch.float32)
    absmax = groups.abs().amax(dim=-1)
    scale = torch.where(absmax > 0, torch.clamp(absmax / INT8_MAX, min=FLT_MIN), torch.ones_like(absmax))
    q = torch.clamp(torch.round(groups / scale.unsqueeze(-1)), -INT8_MAX, INT8_MAX)
    return q.to(torch.int8).reshape(rows, k), scale


def int8_matmul(a: torch.Tensor, b: torch.Tensor, a_scale: torch.Tensor | None, b_scale: torch.Tensor | None,
                bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """a (M, K) int8, b (K, N) int8, a_scale (M,) fp32, b_scale (N,) fp32 -> (M, N) in out_dtype."""
    acc = int8_matmul_int32(a, b)
    if out_dtype == torch.int32:
        return acc
    out = acc.to(torch.float32) * a_scale.reshape(-1, 1).to(torch.float32) * b_scale.reshape(1, -1).to(torch.float32)
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(out_dtype)


def int8_matmul_int32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact integer product of int8 matrices, as int32 (computed in int64 on the tensors' device)."""
    if a.device.type == "cpu":
        return (a.to(torch.int64) @ b.to(torch.int64)).to(torch.int32)
    # CUDA has no integer matmul for int64; fp64 is exact here (|partial sums| < 2^53).
    return (a.to(torch.float64) @ b.to(torch.float64)).to(torch.int32)


def dequantize_weight(w: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """w (N, K) int8, w_scale (N, G) with G dividing K -> fp32 (N, K)."""
    n, k = w.shape
    groups = w_scale.shape[1]
    return (w.to(torch.float32).reshape(n, groups, k // groups) * w_scale.to(torch.float32).unsqueeze(-1)).reshape(n, k)


def int8_weight_matmul(x: torch.Tensor, w: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
                       group_size: int) -> torch.Tensor:
    """x (M, K) float, w (N, K) int8, w_scale (N, K // group_size) fp32 -> (M, N) in x's dtype."""
    out = x.to(torch.float32) @ dequantize_weight(w, w_scale).t()
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(x.dtype)
