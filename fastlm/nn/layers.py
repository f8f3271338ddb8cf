"""Layers: the blocks of a model, keyed by their layer index.

A ModuleDict (so a pipeline stage can hold layers 4..7 under their own names, `blocks.4`, and its
state-dict keys stay a subset of the whole model's) that reads like the ModuleList it replaces:
iterating yields the blocks, `layers[i]` is the i-th block held, `len` counts them.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch import nn


class Layers(nn.ModuleDict):
    def __init__(self, blocks: Iterable[nn.Module] | dict[int | str, nn.Module] | None = None):
        super().__init__()
        items = blocks.items() if isinstance(blocks, dict) else enumerate(blocks or ())
        for index, block in items:
            self[str(index)] = block

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self._modules.values())

    def __getitem__(self, key: int | str) -> nn.Module:
        if isinstance(key, int):  # by position, as in a list
            return list(self._modules.values())[key]
        return self._modules[key]

    def __contains__(self, index: int | str) -> bool:
        return str(index) in self._modules

    def indices(self) -> list[int]:
        """The layer index of every block held, in order."""
        return [int(k) for k in self._modules]

    def subset(self, indices: Iterable[int]) -> "Layers":
        """The same block objects, only those at `indices` (a pipeline stage's share)."""
        keep = {int(i) for i in indices}
        return Layers({int(k): m for k, m in self._modules.items() if int(k) in keep})
