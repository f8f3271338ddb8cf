"""Gated activations (SwiGLU, GeGLU) in Triton: out = act(gate) * up; the backward recomputes act(gate).

Rows of gate/up may have any row stride (unit last stride), e.g. the halves of a [gate | up] tensor.
ACT: 0 SiLU, 1 exact GELU, 2 tanh GELU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _act_and_grad(x, ACT: tl.constexpr):
    if ACT == 0:
        s = tl.sigmoid(x)
        a = x * s
        da = s * (1.0 + x * (1.0 - s))
    elif ACT == 1:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        a = x * cdf
        da = cdf + x * 0.3989422804014327 * tl.exp(-0.5 * x * x)
    else:
        t = _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))
        a = 0.5 * x * (1.0 + t)
        da = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    return a, da


@triton.jit
def _fwd_kernel(GATE, UP, OUT, n, sg, su, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    g = tl.load(GATE + row * sg + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(UP + row * su + cols, mask=mask, other=0.0).to(tl.float32)
    a, _ = _act_and_grad(g, ACT)
    tl.store(OUT + row * n + cols, (a * u).to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(GRAD, GATE, UP, DGATE, DUP, n, sd, sg, su, ACT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n
    dy = tl.load(GRAD + row * sd + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(GATE + row * sg + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(UP + row * su + cols, mask=mask, other=0.0).to(tl.float32)
    a, da = _act_and_grad(g, ACT)
    tl.store(DUP + row * n + cols, (dy * a).to(DUP.dtype.element_ty), mask=mask)
    tl.store(DGATE + row * n + cols, (dy * u * da).to(DGATE.dtype.element_ty), mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    r = t.reshape(-1, t.shape[-1])
    return r if r.stride(-1) == 1 else r.contiguous()


def gated_act_fwd(gate: torch.Tensor, up: torch.Tensor, act: int) -> torch.Tensor:
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    if out.numel() == 0:
        return out
    g, u = _rows(gate), _rows(up)
    n = g.shape[1]
    block = min(BLOCK, triton.next_power_of_2(n))
    _fwd_kernel[(g.shape[0], triton.cdiv(n, block))](g, u, out, n, g.stride(0), u.stride(0), ACT=act, BLOCK=block)
    return out


def gated_act_bwd(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, act: int):
    dgate = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    dup = torch.empty(up.shape, dtype=up.dtype, device=up.device)
    if dgate.numel() == 0:
        return dgate, dup
    d, g, u = _rows(grad), _rows(gate), _rows(up)
    n = g.shape[1]
    block = min(BLOCK, triton.next_power_of_2(n))
    _bwd_kernel[(g.shape[0], triton.cdiv(n, block))](d, g, u, dgate, dup, n, d.stride(0), g.stride(0), u.stride(0),
                                                     ACT=act, BLOCK=block)
    return dgate, dup
