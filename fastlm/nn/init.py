"""The initialization GPT-2 and BERT share: N(0, std) weights and embeddings, zero biases, unit
norms, zero padding rows. Models add their own touches (GPT-2's scaled residual projections)."""
from __future__ import annotations

import torch
from torch import nn

from fastlm.nn.norms import LayerNorm, RMSNorm


def init_weights_(model: nn.Module, std: float) -> None:
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
        if isinstance(module, (LayerNorm, RMSNorm)):
            nn.init.ones_(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
