"""Rotary position embeddings, in the "rotate half" layout Hugging Face LLaMA checkpoints use:
for x = [x1 | x2] (halves of the head dim) and angles a, rope(x) = [x1 cos a - x2 sin a | x2 cos a + x1 sin a].
"""
from __future__ import annotations

import torch


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (len(positions), head_dim // 2), fp32 (one half: both halves use the same angles).

    Computed per forward from the positions (a few tiny ops, once per model call rather than per
    layer) instead of stored as buffers, so casting the model to bf16 never degrades the tables.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    return freqs.cos(), freqs.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    x1, x2 = x[..., :h], x[..., h:]
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o1, o2 = out[..., :h], out[..., h:]
    torch.mul(x1, cos, out=o1)
    o1.addcmul_(x2, sin, value=-1)
    torch.mul(x2, cos, out=o2)
    o2.addcmul_(x1, sin)
    return out


class _Rope(torch.autograd.Function):
    # A rotation's backward is the inverse rotation (sin -> -sin): nothing saved but cos/sin, and
    # no chunk/cat/neg temporaries in either direction (they dominated HF-style RoPE on CPU).
    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, -sin), None, None


def _rotate_functional(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # The same rotation without out= writes, which torch.compile cannot trace (and fuses anyway).
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (B, T, H, D) (any strides); cos/sin: (T, D // 2) from rope_cos_sin. Returns a contiguous tensor."""
    cos = cos.to(x.dtype)[:, None, :]
    sin = sin.to(x.dtype)[:, None, :]
    if torch.compiler.is_compiling():
        return _rotate_functional(x, cos, sin)
    return _Rope.apply(x, cos, sin)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """The HF formulation, kept as the reference the tests compare apply_rope with."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)
