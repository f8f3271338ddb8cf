"""A preallocated key/value cache for incremental decoding."""
from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer, (B, n_kv_head, max_len, head_dim) each.

    `pos` is the number of positions already cached. Each attention layer calls `update()` with
    the new keys/values of the current step (written at `pos`); the model calls `advance()` once
    after all layers have run.
    """

    def __init__(self, n_layer: int, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 device=None, dtype=None):
        shape = (batch_size, n_kv_head, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layer)]
        self.batch_size, self.max_len = batch_size, max_len
        self.pos = 0

    def check(self, batch_size: int, new_len: int) -> None:
        if batch_size != self.batch_size:
            raise ValueError(f"KV cache was made for batch size {self.batch_size}, got {batch_size}")
        if self.pos + new_len > self.max_len:
            raise ValueError(f"KV cache is full: {self.pos} cached + {new_len} new > max_len {self.max_len}")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.pos + k.shape[2]
        self.k[layer][:, :, self.pos:end] = k
        self.v[layer][:, :, self.pos:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.pos += n

    def reset(self) -> None:
        self.pos = 0
