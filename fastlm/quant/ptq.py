"""Post-training quantization of a whole model: every nn.Linear becomes an Int8Linear.

    model = quantize_model(model, "w8a8", skip=["lm_head"], smooth=0.5, calibration_batches=batches)
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

from fastlm.nn.int8_linear import Int8Linear, check_scheme
from fastlm.quant.modules import select_linears, set_submodule
from fastlm.quant.smooth import check_alpha, smooth_linears


def quantize_model(model: nn.Module, scheme: str = "w8a8", skip: Iterable[str] = (), smooth: float | None = None,
                   calibration_batches: Iterable | None = None, group_size: int | None = None) -> nn.Module:
    """Replace, in place, every nn.Linear (fastlm.nn.Linear included) of `model` by an Int8Linear; returns model.

    scheme: "w8a8" (int8 activations per token at run time, int8 weights per channel) or "w8a16"
        (int8 weights, 16/32-bit activations; `group_size` gives per-group weight scales).
    skip: module names or fnmatch patterns to leave in full precision (see fastlm.quant.modules);
        a pattern that matches no linear is an error.
    smooth: SmoothQuant migration strength alpha in [0, 1] (0.5 is usual), w8a8 only; calibrated on
        `calibration_batches` (model inputs: tensors of input ids, tuples of args or dicts of kwargs).
    A weight tied to an embedding (GPT-2's lm_head) is copied into the Int8Linear: the embedding stays.
    Every check runs before anything changes: a bad argument leaves the model as it was.
    """
    check_scheme(scheme)
    alpha = check_alpha(smooth)
    if alpha is not None and scheme != "w8a8":
        raise ValueError(f"smooth = {smooth!r}: smoothing balances activation and weight quantization, so it "
                         f"applies to scheme 'w8a8' only, not {scheme!r}")
    if group_size is not None and scheme != "w8a16":
        raise ValueError(f"group_size = {group_size!r}: only available with scheme 'w8a16'")
    linears = select_linears(model, skip)
    for name, linear in linears:
        if group_size is not None and (isinstance(group_size, bool) or not isinstance(group_size, int)
                                       or group_size < 1 or linear.in_features % group_size):
            raise ValueError(f"group_size = {group_size!r}: expected a positive divisor of the in_features of "
                             f"every quantized linear ({name} has {linear.in_features})")
    factors = smooth_linears(model, linears, calibration_batches, alpha) if alpha is not None else {}
    for name, linear in linears:
        scale, folded = factors.get(name, (None, False))
        set_submodule(model, name, Int8Linear.from_linear(linear, scheme, group_size, scale, folded))
    return model
