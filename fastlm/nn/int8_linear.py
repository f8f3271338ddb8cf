"""Int8Linear: an inference linear layer with int8 weights (post-training quantization, QAT output).

    layer = Int8Linear.from_linear(linear, "w8a8")     # or "w8a16"; linear: nn.Linear / fastlm.nn.Linear
    y = layer(x)                                        # x (..., K) -> (..., N) in x's dtype

Schemes:
    w8a8   activations quantized per token at run time (absmax / 127), weights per output channel;
           int8 x int8 GEMM with int32 accumulation, dequantized in the epilogue (fastlm.ops.int8_matmul;
           on the CPU the weight is packed once for it, fastlm.ops.pack_int8_weight, and again when it changes).
    w8a16  weights int8 (per output channel, or per group of `group_size` input columns), activations
           stay 16/32-bit; the weights are dequantized on the fly (fastlm.ops.int8_weight_matmul).

State dict: `weight` (N, K) int8, `weight_scale` (N,) or (N, K // group_size) fp32, `bias` (N,) fp32 when
the linear has one, and `smooth_scale` (K,) fp32 when SmoothQuant smoothing could not be folded into a
preceding norm (the input is divided by it before quantization). All are buffers: nothing trains.
The output dtype is the input dtype, or autocast's dtype when autocast is on (like nn.Linear).
"""
from __future__ import annotations

import torch
from torch import nn

from fastlm import ops

SCHEMES = ("w8a8", "w8a16")


def check_scheme(scheme) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; expected one of {', '.join(SCHEMES)}")
    return scheme


class Int8Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True, scheme: str = "w8a8",
                 group_size: int | None = None, smooth: bool = False, device=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.scheme = check_scheme(scheme)
        if group_size is not None:
            if scheme != "w8a16":
                raise ValueError(f"group_size is only available with scheme 'w8a16', not {scheme!r}")
            if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1 \
                    or in_features % group_size:
                raise ValueError(f"group_size = {group_size!r}: expected a positive divisor of in_features "
                                 f"({in_features})")
        self.group_size = group_size
        groups = 1 if group_size is None else in_features // group_size
        self.register_buffer("weight", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        scale_shape = (out_features,) if group_size is None else (out_features, groups)
        self.register_buffer("weight_scale", torch.ones(scale_shape, dtype=torch.float32, device=device))
        self.register_buffer("bias", torch.zeros(out_features, dtype=torch.float32, device=device) if bias else None)
        self.register_buffer("smooth_scale", torch.ones(in_features, dtype=torch.float32, device=device)
                             if smooth else None)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, scheme: str = "w8a8", group_size: int | None = None,
                    smooth_scale: torch.Tensor | None = None, smooth_folded: bool = False) -> "Int8Linear":
        """Quantize `linear` (left unchanged, so a weight tied to an embedding stays usable).

        smooth_scale (K,): SmoothQuant factors s; the layer computes (x / s) @ (W * s)^T. With
        smooth_folded the input arrives already divided by s (folded into the previous norm), so
        only the weight is scaled.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"Int8Linear.from_linear expects an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, scheme, group_size,
                    smooth=smooth_scale is not None and not smooth_folded, device=weight.device)
        if smooth_scale is not None:
            smooth_scale = smooth_scale.detach().float().to(weight.device)
            if smooth_scale.shape != (linear.in_features,):
                raise ValueError(f"smooth_scale must have shape ({linear.in_features},), got "
                                 f"{tuple(smooth_scale.shape)}")
            if not smooth_folded:
                layer.smooth_scale.copy_(smooth_scale)
            weight = weight * smooth_scale
        q, scale = ops.quantize_per_channel(weight, group_size)
        layer.weight.copy_(q)
        layer.weight_scale.copy_(scale)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach().float())
        return layer

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 weight this layer computes with, (N, K) (times smooth_scale's inverse if any)."""
        scale = self.weight_scale.reshape(self.out_features, -1)
        w = (self.weight.float().reshape(self.out_features, scale.shape[1], -1) * scale[..., None])
        w = w.reshape(self.out_features, self.in_features)
        return w if self.smooth_scale is None else w / self.smooth_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"Int8Linear: input has {x.shape[-1]} features, expected {self.in_features}")
        if torch.is_autocast_enabled(x.device.type):
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.smooth_scale is not None:
            x = x / self.smooth_scale.to(x.dtype)
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if self.scheme == "w8a16":
            # per-channel scales: the packed weight serves the few-row (decoding) GEMV on the CPU
            packed = self._packed_weight() if self.group_size is None and x2.shape[0] <= 4 else None
            y = ops.int8_weight_matmul(x2, self.weight if packed is None else packed, self.weight_scale, self.bias,
                                       group_size=self.group_size)
        else:
            xq, xs = ops.quantize_per_token(x2)
            packed = self._packed_weight()
            y = ops.int8_matmul(xq, self.weight.t() if packed is None else packed, xs, self.weight_scale, self.bias,
                                out_dtype=x.dtype)
        return y.reshape(*lead, self.out_features)

    def _packed_weight(self):
        """On the CPU a PackedInt8Weight of the weight, packed again whenever the weight buffer changes; else None."""
        w = self.weight
        if w.device.type != "cpu" or torch.compiler.is_compiling():
            return None
        key = (w.data_ptr(), w._version, tuple(w.shape))
        if getattr(self, "_packed_key", None) != key:
            self._packed, self._packed_key = ops.pack_int8_weight(w), key
        return self._packed

    def extra_repr(self) -> str:
        extra = f", group_size={self.group_size}" if self.group_size else ""
        extra += ", smooth" if self.smooth_scale is not None else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, scheme={self.scheme!r}{extra}")
