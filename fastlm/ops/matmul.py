"""Fused matmul: out = activation(a @ b + bias), with the epilogue (bias, GELU, GELU-tanh, SiLU)
applied in fp32 before the one rounding to 16 bits.

    y = fastlm.ops.matmul(x, weight.t(), bias, activation="gelu_tanh")   # x (..., K) -> (..., N)

CPU tensors run the C++ op (csrc/cpu/matmul.cpp: 16-bit inputs computed in fp32, on the faster of
the CPU's native 16-bit GEMM and converted fp32 panels), CUDA tensors the Triton kernel
(kernels/matmul.py), fp64 and FASTLM_BACKEND=reference the plain-torch reference.

Backward: the forward saves the pre-activation (a @ b + bias, in a's dtype) instead of recomputing
it. Unfused, the activation would save that same tensor, so memory is unchanged, and a recompute
would cost one more GEMM (a third of the layer's FLOPs).
"""
from __future__ import annotations

import torch

from fastlm.ops import reference_matmul as reference
from fastlm.ops._backend import KERNEL_DTYPES, use_reference
from fastlm.ops._library import call_op, register_backward_op, register_op

# Public names (also Hugging Face's) -> the kernels' names.
ACTIVATION_ALIASES = {
    None: "none", "none": "none", "gelu": "gelu", "gelu_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh", "silu": "silu", "swish": "silu",
}

# ---------------------------------------------------------------- registration (see _library.py)


def _triton(name: str):
    def launcher():
        from fastlm.kernels import matmul as triton_matmul

        return getattr(triton_matmul, name)

    return launcher


def _fake_fwd(a, b, bias, activation):
    out = a.new_empty((a.shape[0], b.shape[1]))
    return out, (a.new_empty(0) if activation == "none" else torch.empty_like(out))


def _fake_bwd(grad_out, a, b, bias, pre, activation, needs_grad_a, needs_grad_b):
    grad_a = torch.empty_like(a, memory_format=torch.contiguous_format) if needs_grad_a else a.new_empty(0)
    grad_b = torch.empty_like(b) if needs_grad_b else b.new_empty(0)
    grad_bias = torch.empty_like(bias) if bias is not None else a.new_empty(0)
    return grad_a, grad_b, grad_bias


register_op("matmul_fwd", reference=reference.matmul_fwd, triton=_triton("matmul_fwd"), fake=_fake_fwd)
register_op("matmul_bwd", reference=reference.matmul_bwd, triton=_triton("matmul_bwd"), fake=_fake_bwd)


def _setup(ctx, inputs, output):
    a, b, bias, activation = inputs
    _out, pre = output
    needs_b = ctx.needs_input_grad[1]
    # grad_b needs a: saved only then (a frozen-weight layer need not keep its input). b (a weight,
    # alive anyway) is always saved: its layout decides grad_b's.
    ctx.save_for_backward(a if needs_b else None, b, bias, pre)
    ctx.meta = (a.shape, a.dtype, activation)


def _backward(ctx, grad_out, _grad_pre):
    a, b, bias, pre = ctx.saved_tensors
    a_shape, dtype, activation = ctx.meta
    needs_a, needs_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if a is None:  # not needed (grad_b is not): a stand-in of the right shape, expanded zeros, no memory
        a = grad_out.new_zeros((), dtype=dtype).expand(a_shape)
    grad_a, grad_b, grad_bias = torch.ops.fastlm.matmul_bwd(grad_out, a, b, bias, pre, activation, needs_a, needs_b)
    return (grad_a if needs_a else None, grad_b if needs_b else None,
            grad_bias if bias is not None and ctx.needs_input_grad[2] else None, None)


torch.library.register_autograd("fastlm::matmul_fwd", _backward, setup_context=_setup)
register_backward_op("matmul_bwd")

# ---------------------------------------------------------------- checks and the public function


def _check(a, b, bias, activation) -> str:
    for name, t in (("a", a), ("b", b)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"matmul: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"matmul: {name} must be floating point, got {t.dtype}")
    if a.dim() < 1:
        raise ValueError("matmul: a must have at least 1 dimension (..., K), got a scalar")
    if b.dim() != 2:
        raise ValueError(f"matmul: b must be 2-D (K, N), got shape {tuple(b.shape)}")
    if a.shape[-1] != b.shape[0]:
        raise ValueError(f"matmul: K mismatch: a is {tuple(a.shape)} (K = {a.shape[-1]}) but b is {tuple(b.shape)} "
                         f"(K = {b.shape[0]})")
    if a.dtype != b.dtype:
        raise TypeError(f"matmul: a and b must have the same dtype, got {a.dtype} and {b.dtype}")
    if a.device != b.device:
        raise ValueError(f"matmul: a is on {a.device} but b is on {b.device}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor):
            raise TypeError(f"matmul: bias must be a tensor or None, got {type(bias).__name__}")
        if bias.shape != (b.shape[1],):
            raise ValueError(f"matmul: bias must have shape ({b.shape[1]},) (N), got {tuple(bias.shape)}")
        if bias.dtype not in (a.dtype, torch.float32) or not bias.is_floating_point():
            raise TypeError(f"matmul: bias must be {a.dtype} or float32, got {bias.dtype}")
        if bias.device != a.device:
            raise ValueError(f"matmul: bias is on {bias.device} but a is on {a.device}")
    if not (activation is None or isinstance(activation, str)) or activation not in ACTIVATION_ALIASES:
        names = sorted(k for k in ACTIVATION_ALIASES if k is not None)
        raise ValueError(f"matmul: unknown activation {activation!r}; expected None or one of {names}")
    return ACTIVATION_ALIASES[activation]


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
           activation: str | None = None, *, lora_a: torch.Tensor | None = None,
           lora_b: torch.Tensor | None = None, lora_scale: float = 1.0,
           lora_x: torch.Tensor | None = None) -> torch.Tensor:
    """activation(a @ b + bias): a (..., K), b (K, N) (any strides, e.g. weight.t()), bias (N,) or None.

    activation: None, "gelu" (erf), "gelu_tanh" (= "gelu_new"), "silu". Result (..., N) in a's dtype;
    fp32 math for 16-bit inputs. Differentiable in a, b and bias.

    LoRA epilogue: with lora_a (r, K) and lora_b (N, r), activation(a @ b + bias + lora_scale
    (x A^T) B^T) with x = lora_x (the adapter's input, e.g. after dropout) or a, computed by
    fastlm.ops.lora_matmul without a second (M, N) intermediate.
    """
    act = _check(a, b, bias, activation)
    if lora_a is not None or lora_b is not None:
        if lora_a is None or lora_b is None:
            raise ValueError("matmul: the LoRA epilogue needs both lora_a and lora_b")
        from fastlm.ops.lora_matmul import lora_matmul

        out = lora_matmul(a, b.t(), bias, lora_a, lora_b, lora_scale, lora_x)
        return out if act == "none" else reference.ACTIVATIONS[act](out.float()).to(out.dtype)
    lead = a.shape[:-1]
    a2 = a.flatten(0, -2) if a.dim() > 1 else a[None]  # (M, K); flatten also copes with K = 0
    if use_reference(a, b, bias) or a.dtype not in KERNEL_DTYPES:
        out = reference.matmul_fwd(a2, b, bias, act)[0]
    else:
        out = call_op(torch.ops.fastlm.matmul_fwd, a2, b, bias, act)[0]
    return out if a.dim() == 2 else out.reshape(*lead, b.shape[1])


def cpu_gemm16_is_native(dtype: torch.dtype) -> bool:
    """True when torch's own 16-bit GEMM is fast on this CPU (AMX / AVX512-BF16), as `matmul` decides.

    Ops with GEMMs of their own (linear_cross_entropy) compute in fp32 where it is not: on an AVX2
    CPU torch's bf16 GEMM is 10-100x slower than fp32.
    """
    if dtype not in (torch.bfloat16, torch.float16) or not hasattr(torch.ops.fastlm, "matmul_cpu_native16"):
        return True
    return bool(torch.ops.fastlm.matmul_cpu_native16(dtype))


def cpu_gemm16_choice(dtype: torch.dtype) -> str:
    """`matmul`'s 16-bit CPU GEMM for dtype and how it was chosen: "native (cpu feature)" (bf16 on a CPU
    with AMX-BF16 / AVX512-BF16), "native (timed)" / "fp32 (timed)" (elsewhere: one timing per process),
    "native (forced)" / "fp32 (forced)" (FASTLM_CPU_GEMM16). "reference" without the native extension."""
    if not hasattr(torch.ops.fastlm, "matmul_cpu_gemm16_choice"):
        return "reference"
    return str(torch.ops.fastlm.matmul_cpu_gemm16_choice(dtype))
