"""apply_* functions that change how a built model runs, applied from outside (the model never asks).

    apply_activation_checkpointing(model)   # every Block recomputes its activations in the backward
    apply_compile(model)                    # every Block compiled by torch.compile (fullgraph)

Both act on the model's fastlm.nn.Block modules wherever they sit (GPT, encoders, task models),
keep parameter names and state-dict keys, and can be applied to a tensor-parallel model or a
pipeline stage. fastlm.parallel.parallelize composes them with the parallelisms.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from fastlm.nn import Block

_CHECKPOINTED: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    """cls with a forward that recomputes (torch.utils.checkpoint) while training with gradients.

    A subclass swapped into the module's __class__ (not a wrapper module): names, state dicts,
    isinstance checks and deep copies stay as they were."""
    if cls in _CHECKPOINTED.values():
        return cls
    if cls not in _CHECKPOINTED:
        def forward(self, *args, **kwargs):
            run = super(checkpointed, self).forward
            if self.training and torch.is_grad_enabled():
                return checkpoint(run, *args, use_reentrant=False, **kwargs)
            return run(*args, **kwargs)

        checkpointed = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
        _CHECKPOINTED[cls] = checkpointed
    return _CHECKPOINTED[cls]


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's Transformer blocks, each once (ALBERT's shared blocks too)."""
    return [m for m in model.modules() if isinstance(m, Block)]


def apply_activation_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute every block's activations during the backward instead of storing them; returns model."""
    found = blocks(model)
    if not found:
        raise ValueError(f"apply_activation_checkpointing: {type(model).__name__} has no fastlm.nn.Block")
    for block in found:
        block.__class__ = _checkpointed_class(type(block))
    return model


def apply_compile(model: nn.Module, **options) -> nn.Module:
    """torch.compile every block in place (fullgraph=True unless options say otherwise); returns model.

    Blocks of one structure share the compiled code; the model's other parts (embeddings, the fused
    head + loss, which are single fused ops already) run eagerly."""
    found = blocks(model)
    if not found:
        raise ValueError(f"apply_compile: {type(model).__name__} has no fastlm.nn.Block")
    options.setdefault("fullgraph", True)
    for block in found:
        block.compile(**options)
    return model
