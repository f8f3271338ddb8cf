"""The LoRA linear's forward in Triton: out = x W^T + bias + scale (x A^T) B^T in one GEMM kernel (CUDA
tensors; TRITON_INTERPRET=1 in tests).

xa = x A^T (M, r) is computed first (a thin GEMM, also kept for grad_B); then each (BLOCK_M x BLOCK_N)
program accumulates x W^T over K in fp32 and, in its epilogue, adds scale * xa_tile @ B_tile^T (r padded to
16 for tl.dot, masked) and the bias before the one rounding to x's dtype: the adapter never makes an
(M, N) tensor of its own. The backward is fastlm.ops.lora_matmul's composition (cuBLAS GEMMs).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from .matmul import _configs

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.autotune(configs=_configs(), key=["M", "N", "K", "R", "HAS_BIAS"])
@triton.jit
def _lora_matmul_kernel(X, W, XA, LB, C, BIAS, M, N, K, R, scale, stride_xm, stride_xk, stride_wn, stride_wk,
                        stride_am, stride_ar, stride_bn, stride_br, stride_cm, stride_cn,
                        HAS_BIAS: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    grid_m, grid_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
    in_group = GROUP_M * grid_n
    first_m = (pid // in_group) * GROUP_M
    group_size = tl.minimum(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % group_size
    pid_n = (pid % in_group) // group_size

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :].to(tl.int64) * stride_xk
    w_ptrs = W + offs_k[:, None].to(tl.int64) * stride_wk + offs_n[None, :].to(tl.int64) * stride_wn  # W^T tile
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k + k0 < K
        a = tl.load(x_ptrs, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
        b = tl.load(w_ptrs, mask=k_ok[:, None] & (offs_n[None, :] < N), other=0.0)
        if UPCAST:  # the interpreter computes 16-bit dots wrongly
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(a, b, input_precision=PRECISION)
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    # The LoRA epilogue: scale * xa (BLOCK_M, r) @ B^T (r, BLOCK_N), r padded to BLOCK_R.
    offs_r = tl.arange(0, BLOCK_R)
    r_ok = offs_r < R
    xa = tl.load(XA + offs_m[:, None].to(tl.int64) * stride_am + offs_r[None, :] * stride_ar,
                 mask=(offs_m[:, None] < M) & r_ok[None, :], other=0.0)
    bt = tl.load(LB + offs_r[:, None] * stride_br + offs_n[None, :].to(tl.int64) * stride_bn,
                 mask=r_ok[:, None] & (offs_n[None, :] < N), other=0.0)
    if UPCAST:
        lora = tl.dot(xa.to(tl.float32), bt.to(tl.float32), input_precision="ieee")
    else:
        lora = tl.dot(xa, bt, input_precision=PRECISION)
    acc += scale * lora
    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    c_offs = offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :].to(tl.int64) * stride_cn
    tl.store(C + c_offs, acc.to(C.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def lora_matmul_fwd(x, weight, bias, lora_x, lora_a, lora_b, scale: float):
    """(out, xa) as fastlm.ops.lora_matmul's op: x (M, K), weight (N, K), lora_a (r, K), lora_b (N, r)."""
    M, K = x.shape
    N, R = weight.shape[0], lora_a.shape[0]
    xa = (x if lora_x is None else lora_x) @ lora_a.t()
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out, xa
    precision = "tf32" if x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _lora_matmul_kernel[grid](x, weight, xa, lora_b, out, bias if bias is not None else out, M, N, K, R, float(scale),
                              x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), xa.stride(0), xa.stride(1),
                              lora_b.stride(0), lora_b.stride(1), out.stride(0), out.stride(1),
                              HAS_BIAS=bias is not None, UPCAST=_INTERPRET and x.dtype != torch.float32,
                              PRECISION=precision, BLOCK_R=max(16, triton.next_power_of_2(R)))
    return out, xa
