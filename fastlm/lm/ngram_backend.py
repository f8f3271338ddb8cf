"""Where the n-gram work runs: the native ops torch.ops.fastlm.ngram_estimate / ngram_query
(csrc/cpu/ngram*.cpp, parallel C++), or the plain Python/numpy fallback (fastlm/lm/ngram_fallback.py)
when fastlm._C is missing. Both produce and read the same tables (see ngram_kernel.h):
one (keys int64 (m, 2), log_prob float64 (m,), log_backoff float64 (m,)) per order, natural logs.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from fastlm import _native
from fastlm.lm import ngram_fallback

SMOOTHING_CODES = {"modified_kneser_ney": 0, "kneser_ney": 1, "witten_bell": 2, "add_k": 3}

Table = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Estimate(NamedTuple):
    tables: list[Table]
    discounts: torch.Tensor         # (order, 3) D1, D2, D3+ as used (0 for witten_bell / add_k)
    counts_of_counts: torch.Tensor  # (order, 4) t1..t4 of the counts the smoothing used


def native() -> bool:
    return _native.AVAILABLE and hasattr(torch.ops.fastlm, "ngram_estimate")


def estimate(stream: np.ndarray, *, order: int, smoothing: str, bits: int, vocab_size: int, all_vocab: bool,
             k: float, discounts: Sequence[float], prune: Sequence[int], block: int = 1 << 22,
             sort_chunk: int = 1 << 17) -> Estimate:
    """Counts and smooths `stream` (documents as `<s> ids </s>`, internal ids) into backoff tables.

    block / sort_chunk (native only): positions counted per block, and the smallest piece of a sort
    given to one thread; they change the work's shape, never the result (the tests shrink them).
    """
    code = SMOOTHING_CODES[smoothing]
    if native():
        out = torch.ops.fastlm.ngram_estimate(torch.from_numpy(np.ascontiguousarray(stream, dtype=np.int64)), order,
                                              code, bits, vocab_size, all_vocab, float(k), list(map(float, discounts)),
                                              list(map(int, prune)), int(block), int(sort_chunk))
        tables = [(out[3 * i], out[3 * i + 1], out[3 * i + 2]) for i in range(order)]
        return Estimate(tables, out[-2], out[-1])
    tables, used, coc = ngram_fallback.estimate(stream, order=order, smoothing=code, bits=bits, vocab_size=vocab_size,
                                                all_vocab=all_vocab, k=k, discounts=discounts, prune=prune)
    return Estimate(tables, used, coc)


def hash_index(tables: list[Table]) -> list[torch.Tensor] | None:
    """The per-order hash indexes the native query looks keys up in (None without the native ops)."""
    return [torch.ops.fastlm.ngram_hash_index(t[0]) for t in tables] if native() else None


def query(tables: list[Table], index: list[torch.Tensor] | None, bits: int, unk_log_prob: float,
          tokens: torch.Tensor, lengths: torch.Tensor, start: int) -> torch.Tensor:
    """log p(tokens[r, t] | tokens[r, :t]) for start <= t < lengths[r] -> (rows, width - start) float64.

    index: hash_index(tables), built once per model.
    """
    if native() and index is not None:
        return torch.ops.fastlm.ngram_query([t[0] for t in tables], [t[1] for t in tables], [t[2] for t in tables],
                                            index, bits, float(unk_log_prob), tokens, lengths, start)
    return ngram_fallback.query(tables, bits, unk_log_prob, tokens, lengths, start)
