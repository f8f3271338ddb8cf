"""Plain-torch definition of the 2:4 compressed weight format and its matmul (fastlm/ops/sparse24.py).

W (N, K) with at most 2 non-zeros in every group of 4 consecutive input columns (a row's last group
may be partial: G = ceil(K / 4) groups) is stored as
    values (N, 2 G)  the two kept weights of each group, in column order (a zero when fewer are kept)
    meta   (N, ceil(G / 2)) uint8: per group the nibble i0 | i1 << 2 (i0 < i1, offsets in the group);
           group 2j in the low nibble of byte j, group 2j + 1 in the high one.
An offset may point past K in a partial last group only with a zero value (kernels skip it).
"""
from __future__ import annotations

import torch


def compress24(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, meta) of a (N, K) weight with at most 2 non-zeros per group of 4 columns."""
    if weight.dim() != 2:
        raise ValueError(f"compress24: expected a (N, K) weight, got shape {tuple(weight.shape)}")
    n, k = weight.shape
    groups = -(-k // 4)
    w = torch.zeros(n, groups * 4, dtype=torch.float32, device=weight.device)
    w[:, :k] = weight.detach().float()
    w = w.view(n, groups, 4)
    nonzero = w != 0
    if (nonzero.sum(-1) > 2).any():
        raise ValueError("compress24: the weight is not 2:4 sparse (a group of 4 columns has more than 2 non-zeros)")
    # the non-zeros first, then the lowest offsets (real columns before a partial group's padding)
    offsets = torch.arange(4, device=w.device)
    key = nonzero.to(torch.int64) * 8 - offsets
    idx = key.topk(2, dim=-1).indices.sort(dim=-1).values  # (n, groups, 2), i0 < i1
    values = w.gather(-1, idx).reshape(n, groups * 2).contiguous()
    nibbles = (idx[..., 0] | (idx[..., 1] << 2)).to(torch.uint8)  # (n, groups)
    if groups % 2:
        nibbles = torch.cat([nibbles, nibbles.new_zeros(n, 1)], dim=1)
    meta = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).contiguous()
    return values, meta


def decompress24(values: torch.Tensor, meta: torch.Tensor, in_features: int) -> torch.Tensor:
    """The dense (N, K) fp32 weight of (values, meta)."""
    n = values.shape[0]
    groups = values.shape[1] // 2
    nibbles = torch.stack([meta & 0xF, meta >> 4], dim=-1).reshape(n, -1)[:, :groups].to(torch.int64)
    idx = torch.stack([nibbles & 3, nibbles >> 2], dim=-1)  # (n, groups, 2)
    dense = torch.zeros(n, groups, 4, dtype=values.dtype, device=values.device)
    dense.scatter_(-1, idx, values.reshape(n, groups, 2))
    return dense.reshape(n, groups * 4)[:, :in_features]


def sparse24_matmul(x: torch.Tensor, values: torch.Tensor, meta: torch.Tensor, in_features: int,
                    bias: torch.Tensor | None) -> torch.Tensor:
    """x (M, K) @ decompress24(values, meta).T + bias, in fp32 (x's dtype for float64)."""
    w = decompress24(values, meta, in_features).to(x.dtype)
    out = x @ w.t()
    return out + bias.to(x.dtype) if bias is not None else out
