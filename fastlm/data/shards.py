"""Token files in shards, read as one stream without loading them.

A prepared corpus whose split holds more than `SHARD_TOKENS` tokens is written as several files
(`train-00000.bin`, `train-00001.bin`, ...), a new one started at the first document boundary past
the limit, so the files are the same whatever the number of workers that tokenized them. A split
in one file keeps the name `train.bin`. `open_tokens` memory-maps the files of a split: one file is
an ordinary read-only np.memmap, several a `TokenShards`, a 1-D view that slices and fancy-indexes
across file boundaries reading only the tokens asked for.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SHARD_TOKENS = 1 << 28  # tokens per file (512 MiB as uint16) before a split is continued in a new one


def shard_names(split: str, shards: int) -> list[str]:
    """The file names of a split written in `shards` files."""
    return [f"{split}.bin"] if shards == 1 else [f"{split}-{i:05d}.bin" for i in range(shards)]


class TokenShards:
    """Several 1-D token arrays (memory-mapped files, or other TokenShards) seen as one read-only 1-D array
    (len, slicing, integer indexing), in the widest of their dtypes."""

    ndim = 1

    def __init__(self, parts: list):
        if not parts or any(p.ndim != 1 for p in parts):
            raise ValueError("TokenShards needs one or more 1-D arrays")
        self.parts = parts
        self.dtype = np.result_type(*[p.dtype for p in parts])
        self.offsets = np.cumsum([0] + [len(p) for p in parts])  # start of each part; last = total length
        self.shape = (int(self.offsets[-1]),)
        self.size = self.shape[0]

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self._slice(*index.indices(self.size))
        if isinstance(index, (int, np.integer)):
            i = int(index) + (self.size if index < 0 else 0)
            if not 0 <= i < self.size:
                raise IndexError(f"index {index} is out of bounds for {self.size} tokens")
            part = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self.dtype.type(self.parts[part][i - self.offsets[part]])
        return self._take(np.asarray(index))

    def __array__(self, dtype=None, copy=None):
        whole = np.concatenate([np.asarray(p) for p in self.parts]).astype(self.dtype, copy=False)  # loads it all
        return whole if dtype is None else whole.astype(dtype)

    def _slice(self, start: int, stop: int, step: int) -> np.ndarray:
        if step != 1:
            return self._take(np.arange(start, stop, step))
        pieces = []
        for part, begin in zip(self.parts, self.offsets[:-1]):
            lo, hi = max(start, begin), min(stop, begin + len(part))
            if lo < hi:
                pieces.append(part[lo - begin:hi - begin])
        if len(pieces) == 1:
            return np.asarray(pieces[0]).astype(self.dtype, copy=False)
        return np.concatenate([np.asarray(p) for p in pieces]).astype(self.dtype, copy=False) if pieces \
            else np.empty(0, self.dtype)

    def _take(self, index: np.ndarray) -> np.ndarray:
        if index.dtype.kind not in "iu":
            raise IndexError(f"TokenShards takes integer indices, got {index.dtype}")
        flat = index.ravel().astype(np.int64)
        flat = np.where(flat < 0, flat + self.size, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= self.size):
            raise IndexError(f"an index is out of bounds for {self.size} tokens")
        part_of = np.searchsorted(self.offsets, flat, side="right") - 1
        out = np.empty(flat.shape, self.dtype)
        for part in np.unique(part_of):
            chosen = part_of == part
            out[chosen] = self.parts[part][flat[chosen] - self.offsets[part]]
        return out.reshape(index.shape)


def open_tokens(directory: Path, split: str, dtype: np.dtype, counts: list[int]):
    """The tokens of `split` (`counts` per file), memory-mapped: an np.memmap, or a TokenShards over several files."""
    parts = []
    for name, count in zip(shard_names(split, len(counts)), counts):
        path = directory / name
        if path.stat().st_size != count * dtype.itemsize:
            raise ValueError(f"{name} has {path.stat().st_size} bytes, expected {count * dtype.itemsize}")
        # np.memmap cannot map an empty file: an empty split (never a whole corpus) reads as an empty array.
        parts.append(np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.empty(0, dtype))
    return parts[0] if len(parts) == 1 else TokenShards(parts)


class ShardWriter:
    """Writes a split document by document into `<split>-NNNNN.bin` files, a new one past SHARD_TOKENS tokens.

    close() returns the token count of each file; a split that fit in one file is renamed `<split>.bin`.
    """

    def __init__(self, directory: Path, split: str):
        self.directory, self.split = directory, split
        self.counts: list[int] = []
        self._file = None

    def write(self, tokens: np.ndarray) -> None:
        if self._file is None or self.counts[-1] >= SHARD_TOKENS:
            self._next_file()
        self._file.write(tokens.tobytes())
        self.counts[-1] += tokens.size

    def close(self) -> list[int]:
        if self._file is None:
            self._next_file()  # an empty split is still one (empty) file
        self._file.close()
        if len(self.counts) == 1:
            (self.directory / f"{self.split}-00000.bin").rename(self.directory / f"{self.split}.bin")
        return self.counts

    def _next_file(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = open(self.directory / f"{self.split}-{len(self.counts):05d}.bin", "wb")
        self.counts.append(0)
