"""torch.library wiring of the fastlm ops: schemas, per-device kernels, fake kernels, autograd.

The schemas and CPU kernels come from the C++ extension (csrc/registration.cpp, csrc/cpu/). If it
is missing, the same schemas are defined here with the plain-torch references as CPU kernels, so
everything above this file works unchanged. CUDA kernels are the Triton ones (fastlm.kernels).
Fake kernels let torch.compile trace the ops without running them.
"""
from __future__ import annotations

import torch

from fastlm import _native
from fastlm.ops import reference
from fastlm.ops._backend import triton_available

# Must match csrc/registration.cpp (used only when the extension is missing).
SCHEMAS = {
    "rms_norm_fwd": "rms_norm_fwd(Tensor x, Tensor weight, float eps) -> (Tensor, Tensor)",
    "rms_norm_bwd": "rms_norm_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor rstd) -> (Tensor, Tensor)",
    "layer_norm_fwd": "layer_norm_fwd(Tensor x, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor, Tensor)",
    "layer_norm_bwd": (
        "layer_norm_bwd(Tensor grad_y, Tensor x, Tensor weight, Tensor mean, Tensor rstd) -> (Tensor, Tensor, Tensor)"
    ),
}

_libraries: list[torch.library.Library] = []  # kept alive: dropping a Library unregisters it


def _cuda_kernel(name: str):
    """The CUDA implementation of op `name`: Triton when installed, else the reference."""

    def run(*args):
        if triton_available():
            from fastlm.kernels import norms as triton_norms

            return getattr(triton_norms, name)(*args)
        return getattr(reference, name)(*args)

    return run


def _register_kernels() -> None:
    if not _native.AVAILABLE:
        fallback = torch.library.Library("fastlm", "DEF")
        for name, schema in SCHEMAS.items():
            fallback.define(schema)
            fallback.impl(name, getattr(reference, name), "CPU")
        _libraries.append(fallback)
    cuda = torch.library.Library("fastlm", "IMPL")
    for name in SCHEMAS:
        cuda.impl(name, _cuda_kernel(name), "CUDA")
    _libraries.append(cuda)


def _stat(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[:-1], dtype=torch.float32)


def _register_fakes() -> None:
    torch.library.register_fake("fastlm::rms_norm_fwd")(lambda x, weight, eps: (torch.empty_like(x), _stat(x)))
    torch.library.register_fake("fastlm::rms_norm_bwd")(
        lambda grad_y, x, weight, rstd: (torch.empty_like(x), torch.empty_like(weight))
    )
    torch.library.register_fake("fastlm::layer_norm_fwd")(
        lambda x, weight, bias, eps: (torch.empty_like(x), _stat(x), _stat(x))
    )
    torch.library.register_fake("fastlm::layer_norm_bwd")(
        lambda grad_y, x, weight, mean, rstd: (torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight))
    )


def _rms_norm_setup(ctx, inputs, output):
    x, weight, _eps = inputs
    _y, rstd = output
    ctx.save_for_backward(x, weight, rstd)


def _rms_norm_backward(ctx, grad_y, _grad_rstd):
    x, weight, rstd = ctx.saved_tensors
    grad_x, grad_weight = torch.ops.fastlm.rms_norm_bwd(grad_y, x, weight, rstd)
    return grad_x, grad_weight, None


def _layer_norm_setup(ctx, inputs, output):
    x, weight, _bias, _eps = inputs
    _y, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)


def _layer_norm_backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, weight, mean, rstd = ctx.saved_tensors
    grad_x, grad_weight, grad_bias = torch.ops.fastlm.layer_norm_bwd(grad_y, x, weight, mean, rstd)
    return grad_x, grad_weight, grad_bias, None


def _no_double_backward(op: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"{op}: double backward (gradients of gradients) is not supported")

    return backward


def _register_autograd() -> None:
    torch.library.register_autograd("fastlm::rms_norm_fwd", _rms_norm_backward, setup_context=_rms_norm_setup)
    torch.library.register_autograd("fastlm::layer_norm_fwd", _layer_norm_backward, setup_context=_layer_norm_setup)
    for name in ("rms_norm_bwd", "layer_norm_bwd"):
        op = f"fastlm::{name}"
        torch.library.register_autograd(op, _no_double_backward(op), setup_context=lambda ctx, inputs, output: None)


_register_kernels()
_register_fakes()
_register_autograd()
