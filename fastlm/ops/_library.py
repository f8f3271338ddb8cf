"""torch.library wiring shared by every fastlm op: schema, per-device kernels, fake kernel.

Each op file (norms.py, ...) calls `register_op` once at import. The schema and the CPU kernel
normally come from the C++ extension (TORCH_LIBRARY in csrc/); when the extension lacks the op,
the schema is defined here with the plain-torch reference as the CPU kernel, so everything above
works unchanged. CUDA tensors go to the Triton kernel (the reference when Triton is missing).
Fake kernels let torch.compile trace the ops without running them.
"""
from __future__ import annotations

from typing import Callable

import torch

from fastlm import _native  # noqa: F401  (loads fastlm._C, which defines the native ops)
from fastlm.ops._backend import triton_available

_libraries: list[torch.library.Library] = []  # kept alive: dropping a Library unregisters it


def _library(kind: str) -> torch.library.Library:
    lib = torch.library.Library("fastlm", kind)
    _libraries.append(lib)
    return lib


def has_native_op(name: str) -> bool:
    try:
        getattr(torch.ops.fastlm, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def register_op(name: str, schema: str, *, reference: Callable, triton: Callable[[], Callable] | None,
                fake: Callable) -> None:
    """Makes torch.ops.fastlm.<name> usable on CPU and CUDA and traceable.

    schema must match the C++ one (it is used only when the extension lacks the op).
    triton: returns the Triton launcher (imported lazily: Triton is optional).
    """
    if not has_native_op(name):
        fallback = _library("FRAGMENT")
        fallback.define(schema)
        fallback.impl(name, reference, "CPU")

    def cuda_kernel(*args):
        if triton is not None and triton_available():
            return triton()(*args)
        return reference(*args)

    _library("IMPL").impl(name, cuda_kernel, "CUDA")
    torch.library.register_fake(f"fastlm::{name}")(fake)


def register_backward_op(name: str) -> None:
    """A backward op is not differentiable again: say so clearly instead of returning wrong grads."""
    op = f"fastlm::{name}"

    def backward(ctx, *grads):
        raise RuntimeError(f"{op}: double backward (gradients of gradients) is not supported")

    torch.library.register_autograd(op, backward, setup_context=lambda ctx, inputs, output: None)
