"""Feed-forward blocks: plain (GPT-2: fc -> act -> proj) and gated (LLaMA SwiGLU: act(gate) * up -> proj)."""
from __future__ import annotations

import torch
from torch import nn

from fastlm.nn.activations import get_activation


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
        self.fc = nn.Linear(d_model, 2 * d_ff if gated else d_ff, bias=bias)
        self.proj = nn.Linear(d_ff, d_model, bias=bias)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.gated:
            gate, up = h.chunk(2, dim=-1)
            h = self.act(gate) * up
        else:
            h = self.act(h)
        return self.drop(self.proj(h))
