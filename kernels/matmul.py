"""Fused matmul in Triton: out = act(a @ b + bias), fp32 accumulation, epilogue in fp32 (CUDA
tensors; TRITON_INTERPRET=1 in tests).

One program per (BLOCK_M x BLOCK_N) output tile, tiles visited in GROUP_M-row super-groups so
neighbouring programs share A/B tiles in L2. Any strides (b = weight.t() is read in place).
The epilogue adds the bias, stores the pre-activation (kept for the backward) and the activation:
gelu (erf), gelu_tanh (= x * sigmoid(2u), u = sqrt(2/pi)(x + 0.044715 x^3)), silu.
Backward: grad_pre = grad_out * act'(pre) (elementwise kernel, fp32), then the same GEMM kernel
for grad_a = grad_pre @ b^T and grad_b = a^T @ grad_pre (in b's layout).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_ACT_CODES = {"none": 0, "gelu": 1, "gelu_tanh": 2, "silu": 3}
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). Ampere (A100: 164 KB shared memory) and Hopper
# (H100/H200: 228 KB, larger tiles and more warps); small-BLOCK_M tiles for decoding-sized M.
_AMPERE = [(128, 128, 32, 4, 4), (128, 64, 32, 4, 4), (64, 128, 32, 4, 4), (128, 256, 32, 8, 3),
           (256, 128, 32, 8, 3), (64, 64, 32, 4, 5), (32, 64, 64, 4, 4), (16, 64, 128, 4, 4)]
_HOPPER = [(128, 256, 64, 8, 3), (256, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 64, 4, 4),
           (64, 256, 64, 4, 4), (128, 64, 64, 4, 4), (64, 64, 64, 4, 4), (32, 128, 128, 4, 4), (16, 128, 128, 4, 4)]


def _configs():
    if _INTERPRET:  # the interpreter: one small config, quick
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2}, num_warps=1, num_stages=1)]
    hopper = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_warps=w, num_stages=s)
            for m, n, k, w, s in (_HOPPER if hopper else _AMPERE)]


@triton.jit
def _activation(x, ACT: tl.constexpr):
    if ACT == 1:
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 2:
        x = x * tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
    elif ACT == 3:
        x = x * tl.sigmoid(x)
    return x


@triton.jit
def _activation_grad(x, ACT: tl.constexpr):
    """act'(x)."""
    if ACT == 1:
        d = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476)) + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)
    elif ACT == 2:
        s = tl.sigmoid(1.5957691216057308 * (x + 0.044715 * x * x * x))
        d = s + x * s * (1.0 - s) * 1.5957691216057308 * (1.0 + 0.134145 * x * x)
    elif ACT == 3:
        s = tl.sigmoid(x)
        d = s * (1.0 + x * (1.0 - s))
    else:
        d = tl.full(x.shape, 1.0, tl.float32)
    return d


@triton.autotune(configs=_configs(), key=["M", "N", "K", "ACT", "HAS_BIAS"])
@triton.jit
def _matmul_kernel(A, B, C, PRE, BIAS, M, N, K, stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn,
                   ACT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_PRE: tl.constexpr, UPCAST: tl.constexpr,
                   PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
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
    a_ptrs = A + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :].to(tl.int64) * stride_ak
    b_ptrs = B + offs_k[:, None].to(tl.int64) * stride_bk + offs_n[None, :].to(tl.int64) * stride_bn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k + k0 < K
        a = tl.load(a_ptrs, mask=(offs_m[:, None] < M) & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & (offs_n[None, :] < N), other=0.0)
        if UPCAST:  # the interpreter computes bf16 dots wrongly
            acc += tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
        else:
            acc += tl.dot(a, b, input_precision=PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    if HAS_BIAS:
        acc += tl.load(BIAS + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    c_offs = offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :].to(tl.int64) * stride_cn
    c_mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if STORE_PRE:
        tl.store(PRE + c_offs, acc.to(PRE.dtype.element_ty), mask=c_mask)
    acc = _activation(acc, ACT)
    tl.store(C + c_offs, acc.to(C.dtype.element_ty), mask=c_mask)


@triton.jit
def _activation_bwd_kernel(G, PRE, OUT, n, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(PRE + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + offs, g * _activation_grad(x, ACT), mask=mask)


def _gemm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype, bias=None, activation: str = "none",
          pre: torch.Tensor | None = None) -> torch.Tensor:
    M, K = a.shape
    N = b.shape[1]
    out = torch.empty((M, N), dtype=out_dtype, device=a.device)
    if M == 0 or N == 0:
        return out
    if K == 0:  # no products: the epilogue of zeros
        h = torch.zeros((M, N), dtype=torch.float32, device=a.device) + (bias.float() if bias is not None else 0)
        if pre is not None:
            pre.copy_(h)
        from fastlm.ops.reference_matmul import ACTIVATIONS
        return out.copy_(ACTIVATIONS[activation](h))
    fp32 = a.dtype == torch.float32
    precision = "tf32" if fp32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _matmul_kernel[grid](a, b, out, pre if pre is not None else out, bias if bias is not None else out, M, N, K,
                         a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
                         ACT=_ACT_CODES[activation], HAS_BIAS=bias is not None, STORE_PRE=pre is not None,
                         UPCAST=_INTERPRET and a.dtype == torch.bfloat16, PRECISION=precision)
    return out


def matmul_fwd(a, b, bias, activation: str):
    pre = None if activation == "none" else torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype, device=a.device)
    out = _gemm(a, b, a.dtype, bias, activation, pre)
    return out, (pre if pre is not None else a.new_empty(0))


def matmul_bwd(grad_out, a, b, bias, pre, activation: str, needs_grad_a: bool, needs_grad_b: bool):
    grad_out = grad_out.contiguous()
    if activation == "none":
        g32 = grad_out.float()
    else:
        g32 = torch.empty(grad_out.shape, dtype=torch.float32, device=grad_out.device)
        n = g32.numel()
        if n:
            _activation_bwd_kernel[(triton.cdiv(n, 1024),)](grad_out, pre.contiguous(), g32, n,
                                                            ACT=_ACT_CODES[activation], BLOCK=1024)
    g = g32.to(a.dtype)  # tensor-core GEMMs take the 16-bit gradient (fp32 stays fp32)
    empty = a.new_empty(0)
    grad_a = _gemm(g, b.t(), a.dtype) if needs_grad_a else empty
    grad_b = b.new_empty(0)
    if needs_grad_b:
        b_transposed = b.stride(0) == 1 and b.stride(1) != 1
        grad_b = _gemm(g.t(), a, b.dtype).t() if b_transposed else _gemm(a.t(), g, b.dtype)
    grad_bias = g32.sum(0).to(bias.dtype) if bias is not None else empty
    return grad_a, grad_b, grad_bias
