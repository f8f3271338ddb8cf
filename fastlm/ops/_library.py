"""torch.library wiring shared by every fastlm op: schema, per-device kernels, fake kernel.

Each op file (norms.py, ...) calls `register_op` once at import. The schema comes from
schemas.py, its only copy; the CPU kernel normally from the C++ extension (which registers
kernels only, TORCH_LIBRARY_IMPL in csrc/). When the extension lacks the op, the plain-torch
reference is the CPU kernel, so everything above works unchanged. CUDA tensors go to the Triton
kernel (the reference when Triton is missing). Fake kernels let torch.compile trace the ops
without running them.
"""
from __future__ import annotations

from typing import Callable

import torch

from fastlm import _native  # noqa: F401  (loads fastlm._C, which defines the native ops)
from fastlm.ops._backend import triton_available
from fastlm.ops.schemas import SCHEMAS

_libraries: list[torch.library.Library] = []  # kept alive: dropping a Library unregisters it
_fallbacks: set[str] = set()  # ops whose CPU kernel is the plain-torch reference


def _library(kind: str) -> torch.library.Library:
    lib = torch.library.Library("fastlm", kind)
    _libraries.append(lib)
    return lib


def has_native_op(name: str) -> bool:
    """True when the compiled extension implements torch.ops.fastlm.<name> (not the plain-torch fallback)."""
    if name in _fallbacks:
        return False
    try:
        getattr(torch.ops.fastlm, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def register_op(name: str, *, reference: Callable, triton: Callable[[], Callable] | None, fake: Callable) -> None:
    """Defines torch.ops.fastlm.<name> from SCHEMAS[name] and makes it usable on CPU and CUDA and traceable.

    The C++ CPU kernel, when the extension has one, is already registered (the dispatcher checks
    its signature against the schema here). triton: returns the Triton launcher (imported lazily:
    Triton is optional).
    """
    lib = _library("FRAGMENT")
    lib.define(SCHEMAS[name])
    if not torch._C._dispatch_has_kernel_for_dispatch_key(f"fastlm::{name}", "CPU"):
        lib.impl(name, reference, "CPU")
        _fallbacks.add(name)

    def cuda_kernel(*args):
        if triton is not None and triton_available():
            return triton()(*args)
        return reference(*args)

    lib.impl(name, cuda_kernel, "CUDA")
    torch.library.register_fake(f"fastlm::{name}")(fake)


def register_backward_op(name: str) -> None:
    """A backward op is not differentiable again: say so clearly instead of returning wrong grads."""
    op = f"fastlm::{name}"

    def backward(ctx, *grads):
        raise RuntimeError(f"{op}: double backward (gradients of gradients) is not supported")

    torch.library.register_autograd(op, backward, setup_context=lambda ctx, inputs, output: None)


def call_op(op, *args):
    """op(*args); without grad mode (inference: decoding) below the autograd layer.

    The Python autograd wrapper that torch.library.register_autograd puts around an op costs more than
    a decoding-size kernel (M = 1), and with grad mode off it has nothing to record. (Traced code keeps
    the plain call: torch.compile sees the op with its autograd.)
    """
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return op(*args)
    with torch._C._AutoDispatchBelowAutograd():
        return op(*args)
