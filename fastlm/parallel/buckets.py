"""The layout of DataParallel's flat gradient buffers: buckets, each parameter's offset in its
dtype's buffer, and the part of every bucket one rank owns when the optimizer is sharded (ZeRO-1).

Pure bookkeeping (no communication), so DataParallel and ZeRO-1 share one description of it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch


@dataclass
class Bucket:
    index: int
    dtype: torch.dtype
    start: int                   # in the dtype's flat buffer
    size: int                    # padded to a multiple of the world size
    params: list[int] = field(default_factory=list)
    grad: torch.Tensor | None = None      # view of the grad buffer
    comm: torch.Tensor | None = None      # 16-bit copy for a low-precision reduce
    shard_out: torch.Tensor | None = None  # reduce-scatter output (comm dtype)

    def shard(self, rank: int, world: int) -> tuple[int, int]:
        """The [lo, hi) of the dtype's buffer that `rank` owns (a reduce-scatter's 1/world chunk)."""
        n = self.size // world
        return self.start + rank * n, self.start + (rank + 1) * n


class ShardSegment(NamedTuple):
    """Elements [lo, hi) of parameter `index` (flattened) that lie in this rank's shard of `bucket`."""
    index: int
    bucket: int
    lo: int
    hi: int


def plan_buckets(params: list[torch.Tensor], order: list[int], limit_bytes: int,
                 world: int) -> tuple[list[Bucket], list[int], dict[torch.dtype, int]]:
    """Buckets of about limit_bytes in `order`, one buffer per dtype.

    Returns the buckets (in launch order), each parameter's offset in its dtype's buffer, and each
    buffer's size. A bucket is padded to a multiple of `world` so that it reduce-scatters evenly."""
    buckets: list[Bucket] = []
    open_bucket: dict[torch.dtype, Bucket] = {}
    sizes: dict[torch.dtype, int] = {}
    offsets = [0] * len(params)
    for i in order:
        p = params[i]
        b = open_bucket.get(p.dtype)
        if b is None:
            b = Bucket(index=len(buckets), dtype=p.dtype, start=sizes.get(p.dtype, 0), size=0)
            buckets.append(b)
            open_bucket[p.dtype] = b
        offsets[i] = b.start + b.size
        b.size += p.numel()
        b.params.append(i)
        if b.size * p.element_size() >= limit_bytes:
            b.size = -(-b.size // world) * world
            sizes[p.dtype] = b.start + b.size
            del open_bucket[p.dtype]
    for b in open_bucket.values():
        b.size = -(-b.size // world) * world
        sizes[b.dtype] = b.start + b.size
    return buckets, offsets, sizes


def bucket_segments(b: Bucket, offsets: list[int], numels: list[int], rank: int, world: int) -> list[ShardSegment]:
    """The parts of b's parameters that fall in `rank`'s shard of b."""
    lo_b, hi_b = b.shard(rank, world)
    segs = []
    for i in b.params:
        o = offsets[i]
        lo, hi = max(o, lo_b), min(o + numels[i], hi_b)
        if lo < hi:
            segs.append(ShardSegment(i, b.index, lo - o, hi - o))
    return segs
