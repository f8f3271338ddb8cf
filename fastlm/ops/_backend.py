"""Which implementation an op uses: chosen here, by device and dtype, and forceable for debugging.

FASTLM_BACKEND=auto (default: C++ kernels for CPU tensors, Triton for CUDA tensors) | reference
(the plain-torch references everywhere: for debugging, and as a benchmark baseline).
"""
from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "reference")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def forced_backend() -> str:
    value = os.environ.get("FASTLM_BACKEND", "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ValueError(f"FASTLM_BACKEND={value!r} is not one of {', '.join(BACKENDS)}")
    return value


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_reference(*tensors: torch.Tensor) -> bool:
    """True when the plain-torch reference must run instead of the registered kernels."""
    if forced_backend() == "reference":
        return True
    # fp64 and other dtypes have no kernel; the reference handles them exactly.
    return any(t.dtype not in KERNEL_DTYPES for t in tensors if t is not None)
