"""VocabParallelEmbedding: each tp rank holds a contiguous slice of the vocabulary's rows."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastlm.parallel.tensor.collectives import reduce_from_tp
from fastlm.parallel.tensor.layout import split_parts
from fastlm.parallel.tensor.linear import _tp


class VocabParallelEmbedding(nn.Module):
    """Rows [vocab_start, vocab_end) on this rank (torch.chunk split: ceil(V / tp) rows per rank, the
    last rank fewer). A token outside the slice looks up zeros; the sum over the tp ranks is the
    embedding (all-reduce). padding_idx (global id), as in nn.Embedding: its row gets no gradient."""

    def __init__(self, num_embeddings: int, embedding_dim: int, *, group=None, padding_idx: int | None = None,
                 device=None, dtype=None, _init: nn.Embedding | None = None):
        super().__init__()
        self.group = group
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        tp, rank = _tp(group)
        self.tp_size = tp
        (part,) = split_parts([(None, num_embeddings)], "weight", 0, tp, rank)
        self.vocab_start, self.vocab_end = part.global_offset, part.global_offset + part.local_len
        # The padding row's index in this rank's slice (None when another rank holds it).
        in_slice = padding_idx is not None and self.vocab_start <= padding_idx < self.vocab_end
        self.local_padding_idx = padding_idx - self.vocab_start if in_slice else None
        full = _init if _init is not None else nn.Embedding(num_embeddings, embedding_dim, device=device, dtype=dtype)
        with torch.no_grad():
            self.weight = nn.Parameter(full.weight[self.vocab_start:self.vocab_end].clone())
        self.weight._tp_parts = [part]

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, **kwargs) -> "VocabParallelEmbedding":
        return cls(emb.num_embeddings, emb.embedding_dim, padding_idx=emb.padding_idx, _init=emb,
                   device=emb.weight.device, dtype=emb.weight.dtype, **kwargs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(ids, self.weight, self.local_padding_idx)
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)
        out = F.embedding(local, self.weight, self.local_padding_idx).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp(out, self.group)

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim} (rows {self.vocab_start}..{self.vocab_end - 1}), "
                f"tp={self.tp_size}")
