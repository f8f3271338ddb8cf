"""Feed-forward blocks: plain (GPT-2: fc -> act -> proj) and gated (LLaMA SwiGLU: act(gate) * up -> proj)."""
from __future__ import annotations

import torch
from torch import nn

from fastlm import ops
from fastlm.nn.activations import get_activation
from fastlm.nn.linear import Linear
from fastlm.ops.matmul import ACTIVATION_ALIASES

# Activations with a fused gated kernel (act(gate) * up in one pass, backward recomputing act).
# They take fc's [gate | up] output whole (ops.gated_packed): its gradient comes back as one tensor,
# where chunk(2) would make autograd cat the two halves' gradients.
_FUSED_GATED = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_tanh",
                "gelu_pytorch_tanh": "gelu_tanh", "gelu_fast": "gelu_tanh"}


class MLP(nn.Module):
    """`gated=True` is SwiGLU when activation="silu" (GeGLU with a GELU).

    The gated variant keeps gate and up in one Linear (`fc`, output [gate | up]) so the input is
    read once and the GEMM is larger; fastlm.models.hf splits/joins HF's gate_proj/up_proj.
    """

    def __init__(self, d_model: int, d_ff: int, activation: str = "gelu_new", gated: bool = False,
                 bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.gated = gated
        self.d_ff = d_ff
        self.act = get_activation(activation)
        self.gated_act = _FUSED_GATED.get(activation)
        # Plain MLP: the activation runs in fc's GEMM epilogue (same math, fp32) when the layer in
        # fc offers it (`fuses_activation`); another one (tensor parallel, int8) gets it separately.
        self.fused_act = activation if not gated and activation in ACTIVATION_ALIASES else None
        self.fc = Linear(d_model, 2 * d_ff if gated else d_ff, bias=bias)
        self.proj = Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_act is not None and getattr(self.fc, "fuses_activation", False):
            return self.drop(self.proj(self.fc(x, activation=self.fused_act)))
        h = self.fc(x)
        if self.gated and self.gated_act is not None:
            h = ops.gated_packed(h, self.gated_act)
        elif self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.drop(self.proj(h))
