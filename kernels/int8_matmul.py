"""int8 GEMMs in Triton (CUDA tensors; TRITON_INTERPRET=1 in tests).

int8_matmul: a (M, K) int8 @ b (K, N) int8 with tl.dot into int32 (tensor cores: IMMA), epilogue
    float(acc) * a_scale[m] * b_scale[n] + bias[n] in out's dtype, or the raw int32 sums.
int8_weight_matmul (W8A16): x (M, K) 16-bit or fp32 @ w (N, K) int8 dequantized in registers: the
    int8 values are exact in 16 bits, so the tile product runs in x's dtype and the scales apply in
    fp32 to the tile's partial sums (one scale per column of a K tile when the group size is a
    multiple of the K tile, folded into the weights otherwise).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _configs(tiles):
    if _INTERPRET:  # the interpreter: one small config, quick
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 32}, num_warps=1, num_stages=1)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for m, n, k, w, s in tiles]


# Ampere (A100) and Hopper (H100/H200) tiles; int8 K tiles are twice the 16-bit ones (same bytes).
_INT8_CONFIGS = _configs([(128, 128, 64, 4, 3), (128, 256, 128, 8, 3), (256, 128, 128, 8, 3), (64, 128, 128, 4, 4),
                          (128, 64, 128, 4, 4), (64, 64, 128, 4, 4), (32, 64, 256, 4, 4), (16, 64, 256, 4, 3)])
_W8A16_CONFIGS = _configs([(16, 64, 128, 4, 4), (16, 128, 128, 4, 3), (32, 64, 128, 4, 4), (64, 64, 64, 4, 4),
                           (128, 128, 64, 8, 3), (128, 64, 64, 4, 4), (64, 128, 64, 4, 3), (128, 256, 64, 8, 3)])


@triton.autotune(configs=_INT8_CONFIGS, key=["M_BUCKET", "N", "K", "RAW"])
@triton.jit
def _int8_matmul_kernel(A, B, AS, BS, BIAS, OUT, M, N, K, M_BUCKET, stride_am, stride_ak, stride_bk, stride_bn,
                        stride_om, RAW: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_ptrs = A + rm[:, None].to(tl.int64) * stride_am + rk[None, :] * stride_ak
    b_ptrs = B + rk[:, None].to(tl.int64) * stride_bk + rn[None, :] * stride_bn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k in range(0, K, BLOCK_K):
        a = tl.load(a_ptrs, mask=(rm[:, None] < M) & (k + rk[None, :] < K), other=0)
        b = tl.load(b_ptrs, mask=(k + rk[:, None] < K) & (rn[None, :] < N), other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    out_ptrs = OUT + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    out_mask = (rm[:, None] < M) & (rn[None, :] < N)
    if RAW:
        tl.store(out_ptrs, acc, mask=out_mask)
    else:
        a_scale = tl.load(AS + rm, mask=rm < M, other=0.0)
        b_scale = tl.load(BS + rn, mask=rn < N, other=0.0)
        out = acc.to(tl.float32) * a_scale[:, None] * b_scale[None, :]
        if HAS_BIAS:
            out += tl.load(BIAS + rn, mask=rn < N, other=0.0)[None, :]
        tl.store(out_ptrs, out.to(OUT.dtype.element_ty), mask=out_mask)


def _m_bucket(m: int) -> int:
    """Autotuning key for M: decode (1-16), small batches and large ones tune separately."""
    return min(triton.next_power_of_2(max(m, 1)), 4096)


def int8_matmul(a, b, a_scale, b_scale, bias, out_dtype):
    """a (M, K) int8, b (K, N) int8 (any strides), a_scale (M,), b_scale (N,), bias (N,) fp32 -> (M, N) out_dtype."""
    m, k = a.shape
    n = b.shape[1]
    out = torch.empty((m, n), dtype=out_dtype, device=a.device)
    if m == 0 or n == 0:
        return out
    raw = out_dtype == torch.int32
    dummy = out  # pointers that are never read (RAW / no bias)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    _int8_matmul_kernel[grid](a, b, dummy if raw else a_scale, dummy if raw else b_scale,
                              bias if bias is not None else dummy, out, m, n, k, _m_bucket(m),
                              a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0),
                              RAW=raw, HAS_BIAS=bias is not None)
    return out


@triton.autotune(configs=_W8A16_CONFIGS, key=["M_BUCKET", "N", "K", "GROUP_SIZE"])
@triton.jit
def _w8a16_kernel(X, W, S, BIAS, OUT, M, N, K, M_BUCKET, GROUP_SIZE, stride_xm, stride_wn, stride_om,
                  GROUPS: tl.constexpr, HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    x_ptrs = X + rm[:, None].to(tl.int64) * stride_xm + rk[None, :]
    w_ptrs = W + rn[None, :].to(tl.int64) * stride_wn + rk[:, None]  # (BLOCK_K, BLOCK_N) view of w^T
    compute = tl.float32 if UPCAST else X.dtype.element_ty
    n_groups = K // GROUP_SIZE
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    tile_scale = GROUP_SIZE % BLOCK_K == 0  # a K tile lies in one group: scale its partial sums
    for k in range(0, K, BLOCK_K):
        x = tl.load(x_ptrs, mask=(rm[:, None] < M) & (k + rk[None, :] < K), other=0.0).to(compute)
        w = tl.load(w_ptrs, mask=(k + rk[:, None] < K) & (rn[None, :] < N), other=0)
        if GROUPS == 1:  # per channel: scales in the epilogue
            acc += tl.dot(x, w.to(compute), input_precision="ieee")
        elif tile_scale:
            s = tl.load(S + rn * n_groups + k // GROUP_SIZE, mask=rn < N, other=0.0)
            acc += tl.dot(x, w.to(compute), input_precision="ieee") * s[None, :]
        else:
            g = (k + rk[:, None]) // GROUP_SIZE
            s = tl.load(S + rn[None, :] * n_groups + g, mask=(k + rk[:, None] < K) & (rn[None, :] < N), other=0.0)
            acc += tl.dot(x, (w.to(tl.float32) * s).to(compute), input_precision="ieee")
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if GROUPS == 1:
        acc *= tl.load(S + rn, mask=rn < N, other=0.0)[None, :]
    if HAS_BIAS:
        acc += tl.load(BIAS + rn, mask=rn < N, other=0.0)[None, :]
    out_ptrs = OUT + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
    tl.store(out_ptrs, acc.to(OUT.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def int8_weight_matmul(x, w, w_scale, bias, group_size: int):
    """x (M, K) float, w (N, K) int8, w_scale (N, K // group_size) fp32, bias (N,) fp32 -> (M, N) in x's dtype."""
    x = x.contiguous()
    w = w.contiguous()
    m, k = x.shape
    n = w.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0:
        return out
    groups = k // group_size
    upcast = x.dtype == torch.float32 or (_INTERPRET and x.dtype == torch.bfloat16)
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
    _w8a16_kernel[grid](x, w, w_scale, bias if bias is not None else w_scale, out, m, n, k, _m_bucket(m), group_size,
                        x.stride(0), w.stride(0), out.stride(0), GROUPS=1 if groups == 1 else 2,
                        HAS_BIAS=bias is not None, UPCAST=upcast)
    return out
