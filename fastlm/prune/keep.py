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
    there are none). Under tensor parallelism (the masked linears were replaced by their shards) the
    masks of init_from, a pruned run, are split exactly like the weights (shard_pairs)."""
    pairs = [(m.weight, getattr(m, BUFFER)) for m in model.modules()
             if isinstance(getattr(m, BUFFER, None), torch.Tensor)]
    if tensor_parallel and init_from and (Path(init_from) / PRUNE_FILE).is_file():
        from fastlm.prune.saved import read_pruning

        pairs += shard_pairs(model, read_pruning(init_from)[1])
    if not pairs:
        return None

    @torch.no_grad()
    def reapply() -> None:
        for weight, mask in pairs:
            weight.mul_(mask)
    return reapply


def shard_pairs(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight shard, its mask shard) of each tensor-parallel linear of `model` built from a masked
    linear. The masks are named relative to the plain model (a task model may wrap it); a pipeline
    stage holds only some of them. A shard's weight parameters carry `_tp_parts` (fastlm.parallel.
    tensor.layout): pieces of the canonical tensors that lie one after another in the full weight
    ([q | k | v], [gate | up]; a GQA qkv keeps its q rows in `weight`, its replicated k/v in `kv_weight`)."""
    modules = dict(model.named_modules())
    pairs = []
    for name, mask in masks.items():
        found = [m for n, m in modules.items() if n == name or n.endswith("." + name)]
        if len(found) > 1:
            raise ValueError(f"pruning mask {name!r}: {len(found)} modules of the model end with that name")
        if not found or isinstance(getattr(found[0], BUFFER, None), torch.Tensor):
            continue  # not on this pipeline stage, or not split (its attached mask is kept as it is)
        mask = mask.to(dtype=torch.bool)
        base = 0  # where the next canonical tensor starts in the full weight
        for param in found[0].parameters(recurse=False):
            parts = [p for p in getattr(param, "_tp_parts", ()) if p.target.split("[")[0] == "weight"]
            if not parts:
                continue
            pieces = []
            for part in parts:
                pieces.append(mask.narrow(part.dim, base + part.global_offset, part.local_len))
                base += part.global_len
            local = torch.cat(pieces, dim=parts[0].dim).to(param.device)
            if local.shape != param.shape:
                raise ValueError(f"pruning mask {name!r}: its shard {tuple(local.shape)} does not fit the "
                                 f"tensor-parallel weight {tuple(param.shape)}")
            check_pruned(name, param, local)
            pairs.append((param, local))
        if base == 0:
            raise ValueError(f"pruning mask {name!r}: {type(found[0]).__name__} is neither a masked linear "
                             f"nor a tensor-parallel shard of one")
    return pairs


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
