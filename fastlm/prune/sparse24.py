"""Sparse24Linear: a 2:4-pruned linear stored compressed (values + 2-bit offsets) for inference.

    apply_sparse24(model, masks)     # every linear whose mask is 2:4 -> Sparse24Linear, in place

The weight takes ~0.53x the bytes of the dense fp32 one, and forward is fastlm.ops.sparse24_matmul
(a native CPU kernel). Used by `fastlm eval` / `generate` on a run pruned with --pattern 2:4 when
it runs on the CPU; the layer is frozen (training reads the weights dense, the masks keep the zeros).
On disk the same layout is model.safetensors' (fastlm.prune.stored24).
"""
from __future__ import annotations

import torch
from torch import nn

from fastlm import ops
from fastlm.nn.activations import get_activation
from fastlm.ops.matmul import ACTIVATION_ALIASES
from fastlm.ops.reference_sparse24 import compress24, decompress24
from fastlm.prune.keep import check_pruned
from fastlm.quant.modules import set_submodule


class Sparse24Linear(nn.Module):
    fuses_activation = False  # the MLP applies its activation itself

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        values, meta = compress24(linear.weight)  # ValueError when the weight is not 2:4
        self.register_buffer("values", values)
        self.register_buffer("meta", meta)
        bias = linear.bias.detach().float().clone() if linear.bias is not None else None
        self.register_buffer("bias", bias)
        self.activation = getattr(linear, "activation", None)  # a fastlm Linear's own fused activation
        self._act = None
        if self.activation is not None:
            name = ACTIVATION_ALIASES[self.activation]
            self._act = get_activation("gelu_new" if name == "gelu_tanh" else name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = ops.sparse24_matmul(x, self.values, self.meta, self.in_features, self.bias)
        return self._act(y) if self._act is not None else y

    def dense_weight(self) -> torch.Tensor:
        return decompress24(self.values, self.meta, self.in_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def is_24(mask: torch.Tensor) -> bool:
    """True when every group of 4 consecutive input columns keeps at most 2."""
    n, k = mask.shape
    padded = torch.zeros(n, -(-k // 4) * 4, dtype=torch.int32, device=mask.device)
    padded[:, :k] = mask.to(torch.int32)
    return bool((padded.view(n, -1, 4).sum(-1) <= 2).all())


def apply_sparse24(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[str]:
    """Swap each named linear whose mask is 2:4 for a Sparse24Linear; returns the names swapped."""
    swapped = []
    for name, mask in masks.items():
        linear = model.get_submodule(name)
        if isinstance(linear, nn.Linear) and is_24(mask):
            check_pruned(name, linear.weight, mask.to(linear.weight.device))
            set_submodule(model, name, Sparse24Linear(linear).to(linear.weight.device))
            swapped.append(name)
    return swapped
