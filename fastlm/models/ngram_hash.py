"""Fixed integer hashes of token n-grams: the features of the maximum-entropy models.

    hashes = history_hashes(input_ids, order=3, num_buckets=2**22)       # (B, T, order - 1), -1: absent
    feats = ngram_feature_hashes(ids, num_buckets, orders=(1, 2))       # a classifier's n-gram features

The hash is plain integer arithmetic on int64 (no Python hash(), no randomness), so it gives the same
buckets on every machine and device: for an n-gram (t_1, ..., t_n) of token ids t < 2**31,

    h = n;  for t in (t_1, ..., t_n): h = (h * 1000003 + t + 1) mod (2**31 - 1)
    bucket = (h * 48271) mod (2**31 - 1) mod num_buckets

(a polynomial hash over the Mersenne prime field, every product below 2**63, then the MINSTD
multiplier to spread neighbouring values before the reduction to num_buckets). Starting from n keeps
n-grams of different lengths apart.
"""
from __future__ import annotations

import torch

MERSENNE = 2**31 - 1   # the field; num_buckets may be at most this
MULTIPLIER = 1_000_003
SPREAD = 48_271


def _mix(h: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return (h * MULTIPLIER + tokens + 1) % MERSENNE


def _bucket(h: torch.Tensor, num_buckets: int) -> torch.Tensor:
    return (h * SPREAD) % MERSENNE % num_buckets


def check_hash_inputs(ids: torch.Tensor, num_buckets: int) -> None:
    if not isinstance(ids, torch.Tensor) or ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"token ids must be an integer tensor, got {getattr(ids, 'dtype', type(ids).__name__)}")
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or not 1 <= num_buckets <= MERSENNE:
        raise ValueError(f"num_buckets = {num_buckets!r}: expected an integer in [1, 2**31 - 1]")


def history_hashes(input_ids: torch.Tensor, order: int, num_buckets: int,
                   positions: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, order - 1) int64: column k - 1 is the bucket of the k tokens ending at each position
    (the history of length k that predicts the next token), or -1 where the history would reach
    before the sequence start (positions: (B, T) or (B * T,) index of each token within its document;
    default 0..T-1 in every row)."""
    check_hash_inputs(input_ids, num_buckets)
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must have shape (batch, seq), got {tuple(input_ids.shape)}")
    ids = input_ids.long()
    b, t = ids.shape
    if positions is None:
        positions = torch.arange(t, device=ids.device).expand(b, t)
    positions = positions.reshape(b, t)
    columns = []
    for k in range(1, order):
        h = torch.full_like(ids, k)  # the hash reads the oldest token first: k - 1 places back
        for back in range(k - 1, -1, -1):
            h = _mix(h, _shift_right(ids, back))
        columns.append(torch.where(positions >= k - 1, _bucket(h, num_buckets), -1))
    if not columns:
        return ids.new_empty(b, t, 0)
    return torch.stack(columns, dim=-1)


def _shift_right(ids: torch.Tensor, n: int) -> torch.Tensor:
    """ids[:, j - n] at column j (0 where j < n: those positions are masked by the caller)."""
    if n == 0:
        return ids
    return torch.nn.functional.pad(ids[:, :-n], (n, 0)) if n < ids.shape[1] else torch.zeros_like(ids)


def ngram_feature_hashes(ids: list[int], num_buckets: int, orders: tuple[int, ...] = (1, 2)) -> list[int]:
    """The buckets of every n-gram of `ids` for n in orders (a text classifier's features), in order
    of n then position; the same hash as history_hashes."""
    if isinstance(num_buckets, bool) or not isinstance(num_buckets, int) or not 1 <= num_buckets <= MERSENNE:
        raise ValueError(f"num_buckets = {num_buckets!r}: expected an integer in [1, 2**31 - 1]")
    out = []
    for n in orders:
        for start in range(len(ids) - n + 1):
            h = n
            for tok in ids[start:start + n]:
                h = (h * MULTIPLIER + int(tok) + 1) % MERSENNE
            out.append(h * SPREAD % MERSENNE % num_buckets)
    return out
