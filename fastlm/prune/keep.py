"""Keeping pruned weights at zero while a pruned model trains further.

The masks ride on the pruned linears as non-persistent buffers named `prune_mask` (they follow the
module to its device, stay out of the state dict, and survive a task model wrapping the body).
mask_keeper(model) returns the TrainStep `after_step` hook that zeroes the pruned weights again
after every optimizer step: Adam's moments and weight decay would otherwise move them.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

BUFFER = "prune_mask"
PRUNE_FILE = "prune.json"  # a pruned run directory's record (fastlm.prune.saved)


def attach_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Register each mask on its linear (named relative to `model`); what it prunes must be zero already."""
    for name, mask in masks.items():
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"pruning mask {name!r}: no such module in the model") from None
        if not isinstance(linear, nn.Linear) or tuple(mask.shape) != tuple(linear.weight.shape):
            raise ValueError(f"pruning mask {name!r} of shape {tuple(mask.shape)} does not fit "
                             f"{type(linear).__name__} {tuple(getattr(linear, 'weight', torch.empty(0)).shape)}")
        mask = mask.to(device=linear.weight.device, dtype=torch.bool)
        check_pruned(name, linear.weight, mask)
        linear.register_buffer(BUFFER, mask, persistent=False)
    return model


def check_pruned(name: str, weight: torch.Tensor, mask: torch.Tensor) -> None:
    """A saved mask must prune only zeros of the saved weight (else one of the two files was changed)."""
    if torch.count_nonzero(weight.detach()[~mask]):
        raise ValueError(f"pruning mask {name!r} does not match the weights: it prunes non-zero weights "
                         f"(prune_masks.safetensors and model.safetensors are not from the same `fastlm prune`)")


def attached_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """{linear name: mask} of the masks attached to `model`'s linears (names relative to `model`)."""
    return {name: getattr(m, BUFFER) for name, m in model.named_modules()
            if isinstance(getattr(m, BUFFER, None), torch.Tensor)}


def mask_keeper(model: nn.Module, tensor_parallel: bool = False,
                init_from: str | None = None) -> Callable[[], None] | None:
    """The after-optimizer-step hook re-applying the masks attached to `model`'s linears (None when
    there are none). init_from: the run's model.init_from, refused when pruned under tensor parallelism
    (the sharded linears do not carry the masks yet)."""
    if tensor_parallel and init_from and (Path(init_from) / PRUNE_FILE).is_file():
        from fastlm.train.errors import ConfigError  # (fastlm.train imports this module)

        raise ConfigError(f"model.init_from = {str(init_from)!r} is a pruned run: keeping its pruning masks is "
                          f"not available with parallel.tp > 1 yet (use data or pipeline parallelism)")
    pairs = [(m.weight, getattr(m, BUFFER)) for m in model.modules()
             if isinstance(getattr(m, BUFFER, None), torch.Tensor)]
    if not pairs:
        return None

    @torch.no_grad()
    def reapply() -> None:
        for weight, mask in pairs:
            weight.mul_(mask)
    return reapply


def carry_pruning(model: nn.Module, run_dir, init_from: str | None) -> None:
    """A run trained from a pruned run records the same pruning (prune.json + masks): eval then runs
    its 2:4 layers compressed, and a run trained from it keeps them too."""
    if not init_from:
        return
    from fastlm.prune.saved import read_pruning, write_pruning

    pruned = read_pruning(init_from)
    if pruned is not None:
        record, masks = pruned
        write_pruning(run_dir, masks, {**record, "source": str(init_from)})
