"""Packed n-gram keys in numpy: what csrc/cpu/ngram_kernel.h calls a Key.

An n-gram w1..wn is one unsigned 128-bit integer, `bits` bits per word, w1 in the highest bits, so
that sorted keys are sorted n-grams. numpy has no 128-bit integers: a key array is int64 (m, 2),
column 0 the low 64 bits and column 1 the high 64 bits (the little-endian memory of the C++ keys).
"""
from __future__ import annotations

import numpy as np

_ONE = np.uint64(1)


def bits_for(vocab_size: int) -> int:
    """Bits per word for ids 0..V+2 (words, </s>, <s>, <unk>), with the all-ones word never an id."""
    return int(vocab_size + 3).bit_length()


def pack(ids: np.ndarray, bits: int) -> np.ndarray:
    """ids (m, n) non-negative -> keys int64 (m, 2)."""
    ids = np.asarray(ids, dtype=np.int64)
    m, n = ids.shape
    lo = np.zeros(m, dtype=np.uint64)
    hi = np.zeros(m, dtype=np.uint64)
    for j in range(n):
        shift = bits * (n - 1 - j)
        word = ids[:, j].astype(np.uint64)
        if shift >= 64:
            hi |= word << np.uint64(shift - 64)
        else:
            lo |= word << np.uint64(shift)
            if shift + bits > 64:  # straddles the two halves
                hi |= word >> np.uint64(64 - shift)
    return np.stack([lo, hi], axis=1).view(np.int64)


def unpack(keys: np.ndarray, n: int, bits: int) -> np.ndarray:
    """keys int64 (m, 2) -> ids int64 (m, n)."""
    halves = np.ascontiguousarray(keys).view(np.uint64)
    lo, hi = halves[:, 0], halves[:, 1]
    mask = (_ONE << np.uint64(bits)) - _ONE
    out = np.empty((len(keys), n), dtype=np.int64)
    for j in range(n):
        shift = bits * (n - 1 - j)
        if shift >= 64:
            word = hi >> np.uint64(shift - 64)
        else:
            word = lo >> np.uint64(shift)
            if shift + bits > 64:
                word = word | (hi << np.uint64(64 - shift))
        out[:, j] = (word & mask).astype(np.int64)
    return out


def sort_permutation(keys: np.ndarray) -> np.ndarray:
    """The permutation that sorts keys as unsigned 128-bit integers."""
    halves = np.ascontiguousarray(keys).view(np.uint64)
    return np.lexsort((halves[:, 0], halves[:, 1]))


def has_duplicates(sorted_keys: np.ndarray) -> bool:
    return bool(len(sorted_keys) > 1 and np.any(np.all(sorted_keys[1:] == sorted_keys[:-1], axis=1)))
