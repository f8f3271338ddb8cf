"""Rotary position embedding of q and k in one call (the rotate-half layout of HF LLaMA checkpoints).

    q, k = fastlm.ops.rope(q, k, cos, sin)     # q (B, T, Hq, D), k (B, T, Hkv, D), cos/sin (T, D/2)

For x = [x1 | x2] (halves of the head dim): rope(x) = [x1 cos - x2 sin | x2 cos + x1 sin], fp32 math,
one rounding. cos/sin may also be (B, T, D/2) (per-row positions, e.g. packed documents) and any
float dtype. The backward is the inverse rotation (sin -> -sin): only cos/sin are saved. cos/sin
get no gradient (they come from positions). CPU tensors run the C++ kernel (csrc/cpu/rope.cpp),
CUDA tensors the Triton one (kernels/rope.py), fp64 and FASTLM_BACKEND=reference the reference.
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_rope as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import call_op, register_op


def _triton():
    from fastlm.kernels import rope as triton_rope

    return triton_rope.rope_fwd


def _fake(x, cos, sin, inverse):
    return torch.empty_like(x) if x.stride(-1) == 1 else torch.empty_like(x, memory_format=torch.contiguous_format)


register_op("rope_fwd", reference=reference.rope_fwd, triton=_triton, fake=_fake)


def _setup(ctx, inputs, output):
    _x, cos, sin, inverse = inputs
    ctx.save_for_backward(cos, sin)
    ctx.inverse = inverse


def _backward(ctx, grad):
    cos, sin = ctx.saved_tensors
    return torch.ops.fastlm.rope_fwd(grad, cos, sin, not ctx.inverse), None, None, None


torch.library.register_autograd("fastlm::rope_fwd", _backward, setup_context=_setup)


def _check(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    for name, t in (("q", q), ("k", k), ("cos", cos), ("sin", sin)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"rope: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"rope: {name} must be floating point, got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"rope: {name} is on {t.device} but q is on {q.device}")
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"rope: q and k must be (batch, seq, heads, head_dim), "
                         f"got {tuple(q.shape)} and {tuple(k.shape)}")
    b, t, _, d = q.shape
    if k.shape[0] != b or k.shape[1] != t or k.shape[3] != d:
        raise ValueError(f"rope: k {tuple(k.shape)} must match q {tuple(q.shape)} in batch, seq and head_dim")
    if d % 2:
        raise ValueError(f"rope: head_dim must be even, got {d}")
    if cos.shape != sin.shape:
        raise ValueError(f"rope: cos and sin shapes differ: {tuple(cos.shape)} and {tuple(sin.shape)}")
    if tuple(cos.shape) not in ((t, d // 2), (b, t, d // 2)):
        raise ValueError(f"rope: cos/sin must be ({t}, {d // 2}) or ({b}, {t}, {d // 2}) for q {tuple(q.shape)}, "
                         f"got {tuple(cos.shape)}")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    if use_reference(x):
        return reference.rope_fwd(x, cos, sin, False)
    return call_op(torch.ops.fastlm.rope_fwd, x, cos, sin, False)


def rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated (q, k), each in its input's dtype and layout (any strides: e.g. HF's (B, H, T, D) viewed
    as (B, T, H, D) with .transpose(1, 2) comes back in HF's layout)."""
    _check(q, k, cos, sin)
    cos, sin = cos.detach(), sin.detach()
    return _rotate(q, cos, sin), _rotate(k, cos, sin)
