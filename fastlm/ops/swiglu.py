"""Gated MLP activations: swiglu(gate, up) = silu(gate) * up, geglu(gate, up) = gelu(gate) * up.

One op pair (gated_act_fwd / gated_act_bwd) serves both, selected by an activation code. fp32 math,
output in gate's dtype. The backward recomputes act(gate) from the saved inputs instead of keeping
act(gate) (or the sigmoid) alive between forward and backward as eager PyTorch does.
gate/up may be strided row views, e.g. the two halves of one fused [gate | up] projection.
CPU tensors run the C++ kernels (csrc/cpu/gated_act.cpp), CUDA tensors the Triton ones
(kernels/gated_act.py), fp64 and FASTLM_BACKEND=reference the reference.
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_gated as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import call_op, register_backward_op, register_op

GELU_APPROXIMATIONS = {"none": reference.ACT_GELU, "tanh": reference.ACT_GELU_TANH}


def _triton(name: str):
    def launcher():
        from fastlm.kernels import gated_act as triton_gated

        return getattr(triton_gated, name)

    return launcher


def _out(t: torch.Tensor) -> torch.Tensor:
    return torch.empty(t.shape, dtype=t.dtype, device=t.device)


register_op("gated_act_fwd", reference=reference.gated_act_fwd, triton=_triton("gated_act_fwd"),
            fake=lambda gate, up, act: _out(gate))
register_op("gated_act_bwd", reference=reference.gated_act_bwd, triton=_triton("gated_act_bwd"),
            fake=lambda grad, gate, up, act: (_out(gate), _out(up)))


def _triton_packed(name: str):  # CUDA: the two-tensor kernels on h's halves (the backward then joins them)
    def launcher():
        from fastlm.kernels import gated_act as triton_gated

        if name == "fwd":
            return lambda h, act: triton_gated.gated_act_fwd(*h.chunk(2, dim=-1), act)
        return lambda grad, h, act: torch.cat(triton_gated.gated_act_bwd(grad, *h.chunk(2, dim=-1), act), dim=-1)

    return launcher


def _half(h: torch.Tensor) -> torch.Tensor:
    return torch.empty((*h.shape[:-1], h.shape[-1] // 2), dtype=h.dtype, device=h.device)


register_op("gated_act_fwd_packed", reference=reference.gated_act_fwd_packed, triton=_triton_packed("fwd"),
            fake=lambda h, act: _half(h))
register_op("gated_act_bwd_packed", reference=reference.gated_act_bwd_packed, triton=_triton_packed("bwd"),
            fake=lambda grad, h, act: torch.empty(h.shape, dtype=h.dtype, device=h.device))


def _setup(ctx, inputs, output):
    gate, up, act = inputs
    ctx.save_for_backward(gate, up)
    ctx.act = act


def _backward(ctx, grad):
    gate, up = ctx.saved_tensors
    dgate, dup = torch.ops.fastlm.gated_act_bwd(grad, gate, up, ctx.act)
    return dgate, dup, None


def _setup_packed(ctx, inputs, output):
    h, act = inputs
    ctx.save_for_backward(h)
    ctx.act = act


def _backward_packed(ctx, grad):
    (h,) = ctx.saved_tensors
    return torch.ops.fastlm.gated_act_bwd_packed(grad, h, ctx.act), None


torch.library.register_autograd("fastlm::gated_act_fwd", _backward, setup_context=_setup)
torch.library.register_autograd("fastlm::gated_act_fwd_packed", _backward_packed, setup_context=_setup_packed)
register_backward_op("gated_act_bwd")
register_backward_op("gated_act_bwd_packed")


def _gated(op: str, gate: torch.Tensor, up: torch.Tensor, act: int) -> torch.Tensor:
    for name, t in (("gate", gate), ("up", up)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{op}: {name} must be floating point, got {t.dtype}")
    if gate.shape != up.shape:
        raise ValueError(f"{op}: gate and up shapes differ: {tuple(gate.shape)} and {tuple(up.shape)}")
    if gate.dtype != up.dtype:
        raise TypeError(f"{op}: gate and up dtypes differ: {gate.dtype} and {up.dtype}")
    if gate.device != up.device:
        raise ValueError(f"{op}: gate is on {gate.device} but up is on {up.device}")
    if gate.dim() == 0:
        raise ValueError(f"{op}: gate and up must have at least one dimension")
    if use_reference(gate, up):
        return reference.gated_act_fwd(gate, up, act)
    return call_op(torch.ops.fastlm.gated_act_fwd, gate, up, act)


def gated_packed(h: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """act(gate) * up for h = [gate | up] (..., 2n) -> (..., n): one fused projection's output. Same values
    as swiglu / geglu on h.chunk(2, -1), but h's gradient comes back as one tensor (no cat of two halves
    in the backward). activation: "silu", "gelu" or "gelu_tanh"."""
    acts = {"silu": reference.ACT_SILU, "gelu": reference.ACT_GELU, "gelu_tanh": reference.ACT_GELU_TANH}
    if activation not in acts:
        raise ValueError(f"gated_packed: activation must be one of {sorted(acts)}, got {activation!r}")
    if not isinstance(h, torch.Tensor) or not h.is_floating_point():
        raise TypeError(f"gated_packed: h must be a floating-point tensor, got {getattr(h, 'dtype', type(h).__name__)}")
    if h.dim() == 0 or h.shape[-1] % 2:
        raise ValueError(f"gated_packed: h's last dimension must be even ([gate | up]), got shape {tuple(h.shape)}")
    if use_reference(h):
        return reference.gated_act_fwd_packed(h, acts[activation])
    return call_op(torch.ops.fastlm.gated_act_fwd_packed, h, acts[activation])


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up (LLaMA's MLP), same shape and dtype as gate."""
    return _gated("swiglu", gate, up, reference.ACT_SILU)


def geglu(gate: torch.Tensor, up: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """gelu(gate) * up; approximate="tanh" for the tanh GELU (Gemma's gelu_pytorch_tanh)."""
    if approximate not in GELU_APPROXIMATIONS:
        raise ValueError(f"geglu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _gated("geglu", gate, up, GELU_APPROXIMATIONS[approximate])
