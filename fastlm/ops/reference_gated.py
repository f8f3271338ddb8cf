"""Plain-torch reference of the gated activations: out = act(gate) * up, fp32 math.

act codes (the int argument of the ops): 0 SiLU (SwiGLU), 1 exact GELU, 2 tanh GELU (GeGLU).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

ACT_SILU, ACT_GELU, ACT_GELU_TANH = 0, 1, 2


def activation(x: torch.Tensor, act: int) -> torch.Tensor:
    if act == ACT_SILU:
        return F.silu(x)
    if act == ACT_GELU:
        return F.gelu(x)
    if act == ACT_GELU_TANH:
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"gated activation code must be 0, 1 or 2, got {act}")


def _math(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.promote_types(t.dtype, torch.float32))  # fp32 math (fp64 stays fp64)


def gated_act_fwd(gate: torch.Tensor, up: torch.Tensor, act: int) -> torch.Tensor:
    return (activation(_math(gate), act) * _math(up)).to(gate.dtype)


def gated_act_bwd(grad: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, act: int):
    with torch.enable_grad():
        g = _math(gate.detach()).requires_grad_()
        a = activation(g, act)
        (da,) = torch.autograd.grad(a, g, _math(grad) * _math(up))
    return da.to(gate.dtype), (_math(grad) * a.detach()).to(up.dtype)


def gated_act_fwd_packed(h: torch.Tensor, act: int) -> torch.Tensor:
    """h (..., 2n) = [gate | up]."""
    return gated_act_fwd(*h.chunk(2, dim=-1), act)


def gated_act_bwd_packed(grad: torch.Tensor, h: torch.Tensor, act: int) -> torch.Tensor:
    """The gradient of h as one (..., 2n) tensor [dgate | dup]."""
    return torch.cat(gated_act_bwd(grad, *h.chunk(2, dim=-1), act), dim=-1)
