"""The LoRA linear as one op: out = x W^T + bias + scale (x A^T) B^T.

    y = fastlm.ops.lora_matmul(x, weight, bias, lora_a, lora_b, scale)   # also ops.matmul(..., lora_a=...)

No full-size intermediate besides the output: the base GEMM writes `out`, then the rank-r product
x A^T (M, r) is multiplied by B^T and added into that same buffer (addmm_, beta = 1), so the
adapter costs two thin GEMMs and no (M, N) temporary, in the forward and in the backward
(grad_x = g W + scale (g B) A accumulates the same way). x A^T is saved for grad_B.

CPU runs this composition of BLAS calls (16-bit CPU inputs take fastlm's matmul for the base GEMM, whose
fp32 panels beat torch's bf16 GEMM on CPUs without native 16-bit); CUDA the Triton kernel
(kernels/lora_matmul.py: the adapter's product added in the base GEMM's epilogue, before the one rounding),
with the backward composed of cuBLAS GEMMs as on CPU; fp64 and FASTLM_BACKEND=reference the plain-torch
reference (reference_lora.py).
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_lora as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import register_backward_op, register_op

_EMPTY = ()


def _base_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x W^T + bias into a fresh (M, N) buffer."""
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        return torch.ops.fastlm.matmul_fwd(x, weight.t(), bias, "none")[0]
    if bias is not None:
        return torch.addmm(bias.to(x.dtype), x, weight.t())
    return x @ weight.t()


def lora_matmul_fwd(x, weight, bias, lora_x, lora_a, lora_b, scale: float):
    """(out, xa): out = x W^T + bias + scale xa B^T with xa = lora_x A^T (M, r), both in x's dtype."""
    xa = (x if lora_x is None else lora_x) @ lora_a.t()
    out = _base_gemm(x, weight, bias)
    out.addmm_(xa, lora_b.t(), alpha=scale)  # the adapter's product added into the base GEMM's output
    return out, xa


def lora_matmul_bwd(grad_out, x, weight, lora_x, lora_a, lora_b, xa, scale: float, has_bias: bool,
                    needs: list[bool]):
    """(grad_x, grad_weight, grad_bias, grad_lora_x, grad_a, grad_b); an unneeded one comes back empty.
    needs: [x, weight, lora_x, a, b]."""
    g = grad_out
    empty = g.new_empty(0)
    gb = g @ lora_b  # (M, r)
    grad_x = grad_lx = grad_w = grad_bias = grad_a = grad_b = empty
    if needs[0]:
        grad_x = g @ weight
        if lora_x is None:  # x feeds the adapter too: its share accumulates in place
            grad_x.addmm_(gb, lora_a, alpha=scale)
    if needs[2] and lora_x is not None:
        grad_lx = (gb @ lora_a) * scale
    if needs[1]:
        grad_w = g.t() @ x
    if has_bias:
        grad_bias = g.sum(0)
    if needs[3]:
        grad_a = (gb.t() @ (x if lora_x is None else lora_x)) * scale
    if needs[4]:
        grad_b = (g.t() @ xa) * scale
    return grad_x, grad_w, grad_bias, grad_lx, grad_a, grad_b


def _fake_fwd(x, weight, bias, lora_x, lora_a, lora_b, scale):
    return x.new_empty((x.shape[0], weight.shape[0])), x.new_empty((x.shape[0], lora_a.shape[0]))


def _fake_bwd(grad_out, x, weight, lora_x, lora_a, lora_b, xa, scale, has_bias, needs):
    e = x.new_empty(0)
    return (torch.empty_like(x) if needs[0] else e, torch.empty_like(weight) if needs[1] else e,
            x.new_empty(weight.shape[0]) if has_bias else e,
            torch.empty_like(lora_x) if needs[2] and lora_x is not None else e,
            torch.empty_like(lora_a) if needs[3] else e, torch.empty_like(lora_b) if needs[4] else e)


def _triton_fwd():
    from fastlm.kernels import lora_matmul as triton_lora

    return triton_lora.lora_matmul_fwd


register_op("lora_matmul_fwd", reference=lora_matmul_fwd, triton=_triton_fwd, fake=_fake_fwd)
register_op("lora_matmul_bwd", reference=lora_matmul_bwd, triton=None, fake=_fake_bwd)


def _setup(ctx, inputs, output):
    x, weight, bias, lora_x, lora_a, lora_b, scale = inputs
    ctx.save_for_backward(x, weight, lora_x, lora_a, lora_b, output[1])
    ctx.scale = scale
    ctx.has_bias = bias is not None
    ctx.bias_dtype = bias.dtype if bias is not None else None


def _backward(ctx, grad_out, _grad_xa):
    x, weight, lora_x, lora_a, lora_b, xa = ctx.saved_tensors
    n = ctx.needs_input_grad
    needs = [n[0], n[1], n[3], n[4], n[5]]
    gx, gw, gbias, glx, ga, gb = torch.ops.fastlm.lora_matmul_bwd(
        grad_out.contiguous(), x, weight, lora_x, lora_a, lora_b, xa, ctx.scale, ctx.has_bias, needs)
    return (gx if n[0] else None, gw if n[1] else None,
            gbias.to(ctx.bias_dtype) if ctx.has_bias and n[2] else None,
            glx if lora_x is not None and n[3] else None, ga if n[4] else None, gb if n[5] else None, None)


torch.library.register_autograd("fastlm::lora_matmul_fwd", _backward, setup_context=_setup)
register_backward_op("lora_matmul_bwd")


def _check(x, weight, bias, lora_a, lora_b, lora_x) -> None:
    if x.dim() < 1 or weight.dim() != 2:
        raise ValueError(f"lora_matmul: x must be (..., K) and weight (N, K), got {tuple(x.shape)} and {tuple(weight.shape)}")
    n, k = weight.shape
    if x.shape[-1] != k:
        raise ValueError(f"lora_matmul: K mismatch: x is {tuple(x.shape)} but weight is {tuple(weight.shape)}")
    if lora_a.dim() != 2 or lora_a.shape[1] != k:
        raise ValueError(f"lora_matmul: lora_a must be (rank, {k}), got {tuple(lora_a.shape)}")
    if lora_b.dim() != 2 or lora_b.shape != (n, lora_a.shape[0]):
        raise ValueError(f"lora_matmul: lora_b must be ({n}, {lora_a.shape[0]}), got {tuple(lora_b.shape)}")
    if lora_x is not None and lora_x.shape != x.shape:
        raise ValueError(f"lora_matmul: lora_x must have x's shape {tuple(x.shape)}, got {tuple(lora_x.shape)}")
    for name, t in (("weight", weight), ("lora_a", lora_a), ("lora_b", lora_b), ("lora_x", lora_x)):
        if t is not None and (t.dtype != x.dtype or t.device != x.device):
            raise TypeError(f"lora_matmul: {name} is {t.dtype} on {t.device}, x is {x.dtype} on {x.device}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"lora_matmul: bias must have shape ({n},), got {tuple(bias.shape)}")


def lora_matmul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lora_a: torch.Tensor,
                lora_b: torch.Tensor, scale: float, lora_x: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T + bias + scale (lora_x A^T) B^T: x (..., K), weight (N, K), lora_a (r, K), lora_b (N, r);
    lora_x (x's shape): the adapter's input when it differs from x (dropout). Differentiable in all."""
    _check(x, weight, bias, lora_a, lora_b, lora_x)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    lx2 = lora_x.reshape(-1, x.shape[-1]) if lora_x is not None else None
    if use_reference(x, weight, bias, lora_a, lora_b):
        out = reference.lora_matmul(x2, weight, bias, lora_a, lora_b, scale, lx2)
    else:
        out = torch.ops.fastlm.lora_matmul_fwd(x2, weight, bias, lx2, lora_a, lora_b, float(scale))[0]
    return out.reshape(*lead, weight.shape[0])
