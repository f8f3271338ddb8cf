"""RMSNorm and LayerNorm, forward and backward, in Triton.

One program normalizes one row held whole in registers (the hidden size rounded up to a power
of two, so up to MAX_HIDDEN). The backward also accumulates the weight (and bias) gradient of
a group of rows per program in fp32; the per-program partials are summed afterwards.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_HIDDEN = 65536


@triton.jit
def _rms_norm_fwd_kernel(X, W, Y, RSTD, stride_x, stride_y, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * stride_y + cols, (x * rstd * w).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_bwd_kernel(DY, X, W, RSTD, DX, DW_PARTIAL, stride_dy, stride_x, stride_dx, n_rows, n_cols,
                         rows_per_program, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    row_start = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = row_start + i
        if row < n_rows:
            x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            xhat = x * rstd
            gw = dy * w
            c = tl.sum(gw * xhat, axis=0) / n_cols
            tl.store(DX + row * stride_dx + cols, (rstd * (gw - xhat * c)).to(DX.dtype.element_ty), mask=mask)
            dw += dy * xhat
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)


@triton.jit
def _layer_norm_fwd_kernel(X, W, B, Y, MEAN, RSTD, stride_x, stride_y, n_cols, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    xc = tl.where(mask, x - mean, 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / n_cols + eps)
    tl.store(MEAN + row, mean)
    tl.store(RSTD + row, rstd)
    tl.store(Y + row * stride_y + cols, (xc * rstd * w + b).to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _layer_norm_bwd_kernel(DY, X, W, MEAN, RSTD, DX, DW_PARTIAL, DB_PARTIAL, stride_dy, stride_x, stride_dx, n_rows,
                           n_cols, rows_per_program, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    db = tl.zeros([BLOCK], dtype=tl.float32)
    row_start = pid * rows_per_program
    for i in range(0, rows_per_program):
        row = row_start + i
        if row < n_rows:
            x = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
            mean = tl.load(MEAN + row)
            rstd = tl.load(RSTD + row)
            xhat = tl.where(mask, (x - mean) * rstd, 0.0)
            gw = dy * w
            c1 = tl.sum(gw * xhat, axis=0) / n_cols
            c2 = tl.sum(gw, axis=0) / n_cols
            tl.store(DX + row * stride_dx + cols, (rstd * (gw - xhat * c1 - c2)).to(DX.dtype.element_ty), mask=mask)
            dw += dy * xhat
            db += dy
    tl.store(DW_PARTIAL + pid * n_cols + cols, dw, mask=mask)
    tl.store(DB_PARTIAL + pid * n_cols + cols, db, mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (rows, n) with unit stride along n (a view when possible)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _block(n_cols: int) -> int:
    if n_cols > MAX_HIDDEN:
        raise ValueError(f"hidden size {n_cols} exceeds the Triton norm kernels' limit of {MAX_HIDDEN}")
    return triton.next_power_of_2(n_cols)


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


def _backward_grid(n_rows: int, device: torch.device) -> tuple[int, int]:
    """(programs, rows per program) for the backward: a few programs per SM, each owning a dw partial."""
    if device.type == "cuda":
        programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:  # the Triton interpreter (tests)
        programs = 4
    programs = max(1, min(n_rows, programs))
    return programs, triton.cdiv(n_rows, programs)


def rms_norm_fwd(x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None):
    x2 = _rows(x)
    n_rows, n_cols = x2.shape
    y = torch.empty_like(x2, dtype=out_dtype or x.dtype)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    block = _block(n_cols)
    if n_rows > 0:
        _rms_norm_fwd_kernel[(n_rows,)](x2, weight, y, rstd, x2.stride(0), y.stride(0), n_cols, eps, BLOCK=block,
                                        num_warps=_num_warps(block))
    return y.view(x.shape), rstd.view(x.shape[:-1])


def rms_norm_bwd(grad_y, x, weight, rstd):
    x2, dy2 = _rows(x), _rows(grad_y)
    n_rows, n_cols = x2.shape
    dx = torch.empty_like(x2)
    block = _block(n_cols)
    programs, rows_per_program = _backward_grid(n_rows, x.device)
    dw_partial = torch.zeros(programs, n_cols, dtype=torch.float32, device=x.device)
    if n_rows > 0:
        _rms_norm_bwd_kernel[(programs,)](dy2, x2, weight, rstd.contiguous(), dx, dw_partial, dy2.stride(0),
                                          x2.stride(0), dx.stride(0), n_rows, n_cols, rows_per_program, BLOCK=block,
                                          num_warps=_num_warps(block))
    return dx.view(x.shape), dw_partial.sum(0).to(weight.dtype)


def layer_norm_fwd(x, weight, bias, eps: float):
    x2 = _rows(x)
    n_rows, n_cols = x2.shape
    y = torch.empty_like(x2)
    mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    rstd = torch.empty(n_rows, dtype=torch.float32, device=x.device)
    block = _block(n_cols)
    if n_rows > 0:
        _layer_norm_fwd_kernel[(n_rows,)](x2, weight, bias, y, mean, rstd, x2.stride(0), y.stride(0), n_cols, eps,
                                          BLOCK=block, num_warps=_num_warps(block))
    return y.view(x.shape), mean.view(x.shape[:-1]), rstd.view(x.shape[:-1])


def layer_norm_bwd(grad_y, x, weight, mean, rstd):
    x2, dy2 = _rows(x), _rows(grad_y)
    n_rows, n_cols = x2.shape
    dx = torch.empty_like(x2)
    block = _block(n_cols)
    programs, rows_per_program = _backward_grid(n_rows, x.device)
    dw_partial = torch.zeros(programs, n_cols, dtype=torch.float32, device=x.device)
    db_partial = torch.zeros(programs, n_cols, dtype=torch.float32, device=x.device)
    if n_rows > 0:
        _layer_norm_bwd_kernel[(programs,)](dy2, x2, weight, mean.contiguous(), rstd.contiguous(), dx, dw_partial,
                                            db_partial, dy2.stride(0), x2.stride(0), dx.stride(0), n_rows, n_cols,
                                            rows_per_program, BLOCK=block, num_warps=_num_warps(block))
    return dx.view(x.shape), dw_partial.sum(0).to(weight.dtype), db_partial.sum(0).to(weight.dtype)
