"""adamw_step: one fused AdamW step over lists of tensors (the kernel of fastlm.optim.AdamW).

CPU tensors run the C++ kernel (csrc/cpu/adamw.cpp: one pass over p, g, m, v, all tensors split
over threads in one call; FASTLM_ADAMW_KERNEL=avx512|avx2|scalar forces a vector path), CUDA
tensors the Triton one (kernels/adamw.py), FASTLM_BACKEND=reference the plain-torch reference.
"""
from __future__ import annotations

from typing import Sequence

import torch

from fastlm.ops import reference_adamw as reference
from fastlm.ops._backend import forced_backend
from fastlm.ops._library import has_native_op, register_op


def _triton():
    from fastlm.kernels import adamw as triton_adamw

    return triton_adamw.adamw_step_


register_op("adamw_step_", reference=reference.adamw_step_, triton=_triton, fake=lambda *args: None)


def adamw_cpu_kernel() -> str:
    """The vector path the C++ kernel takes now ("avx512", "avx2", "scalar"), or "reference"."""
    if forced_backend() == "reference" or not has_native_op("adamw_step_"):
        return "reference"
    return torch.ops.fastlm.adamw_cpu_kernel()


def adamw_step(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor],
               exp_avg_sqs: Sequence[torch.Tensor], masters: Sequence[torch.Tensor], steps: Sequence[torch.Tensor], *,
               lr: float, beta1: float, beta2: float, eps: float, weight_decay: float) -> None:
    """Steps every params[i] in place (see schemas.py "adamw_step_" for the layout); no autograd.

    All tensors of one call are on one device, except steps: 0-d fp32 CPU tensors (torch's state["step"]),
    incremented here. masters[i] is an empty tensor for fp32 params.
    """
    if not params:
        return
    args = (list(params), list(grads), list(exp_avgs), list(exp_avg_sqs), list(masters), list(steps),
            float(lr), float(beta1), float(beta2), float(eps), float(weight_decay))
    with torch.no_grad():
        if forced_backend() == "reference":
            reference.adamw_step_(*args)
        else:
            torch.ops.fastlm.adamw_step_(*args)
