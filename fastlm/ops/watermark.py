"""The watermark bias of a sampling step, in one kernel (Kirchenbauer et al. 2023's green lists).

    logits = fastlm.ops.watermark_bias(logits, seeds, codes, threshold, delta)   # (B, V)

logits[b, v] + delta where mix32(seeds[b] ^ codes[v]) < threshold: seeds are the keyed hashes of each
row's context, codes those of the vocabulary (fastlm.accountability.watermark computes both), and the
green fraction is threshold / 2^32. CPU tensors run the C++ kernel (csrc/cpu/watermark.cpp), CUDA
tensors the Triton one (kernels/watermark.py), fp64 and FASTLM_BACKEND=reference the plain-torch
reference (reference_watermark.py: a dozen elementwise ops, each a separate pass and dispatch).
Not differentiable (generation runs without gradients).
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_watermark as reference
from fastlm.ops._backend import use_reference
from fastlm.ops._library import register_op


def _fake(logits, seeds, codes, threshold, delta):
    return logits.new_empty(logits.shape)


def _triton():
    from fastlm.kernels import watermark

    return watermark.watermark_bias


register_op("watermark_bias", reference=reference.watermark_bias, triton=_triton, fake=_fake)


def _check(logits, seeds, codes, threshold) -> None:
    op = "watermark_bias"
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point() or logits.dim() != 2:
        raise ValueError(f"{op}: logits must be a 2-D floating-point tensor (batch, vocab), got "
                         f"{getattr(logits, 'dtype', type(logits).__name__)} {tuple(getattr(logits, 'shape', ()))}")
    for name, t, n in (("seeds", seeds, logits.shape[0]), ("codes", codes, logits.shape[1])):
        if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or tuple(t.shape) != (n,):
            raise ValueError(f"{op}: {name} must be an int64 tensor of shape ({n},), got "
                             f"{getattr(t, 'dtype', type(t).__name__)} {tuple(getattr(t, 'shape', ()))}")
        if t.device != logits.device:
            raise ValueError(f"{op}: {name} are on {t.device} but logits are on {logits.device}")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or not 0 <= threshold <= 2**32:
        raise ValueError(f"{op}: threshold = {threshold!r}: expected an integer in [0, 2**32]")


def watermark_bias(logits: torch.Tensor, seeds: torch.Tensor, codes: torch.Tensor, threshold: int,
                   delta: float) -> torch.Tensor:
    """logits (B, V) with delta added to each row's green tokens; see the module doc."""
    _check(logits, seeds, codes, threshold)
    if use_reference(logits):
        return reference.watermark_bias(logits, seeds, codes, threshold, float(delta))
    return torch.ops.fastlm.watermark_bias(logits, seeds, codes, threshold, float(delta))
