"""Tokenization over `data.workers` processes: batches of documents in, token arrays out, in order.

The parent reads the documents and writes the token files; the workers only encode. Results come
back in the order the batches went out, so the token files are byte-identical to one worker's.
At most two batches per worker are in flight: a corpus larger than memory streams through.
"""
from __future__ import annotations

import collections
import multiprocessing
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from fastlm.data.tokenizer import load_tokenizer

_worker_tokenizer = None


def encode_documents(tok, docs: list[str], dtype: np.dtype, eos_id: int) -> list[np.ndarray]:
    """Each document's token ids followed by `eos_id`, as arrays of `dtype`."""
    fast = getattr(tok, "encode_batch_fast", None)  # no offsets: faster (tokenizers >= 0.21)
    encodings = (fast or tok.encode_batch)(docs, add_special_tokens=False)
    return [np.append(np.asarray(e.ids, dtype=dtype), np.asarray(eos_id, dtype=dtype)) for e in encodings]


def encoded_batches(tok, tokenizer_path: Path, batches: Iterable[list[str]], dtype: np.dtype, eos_id: int,
                    workers: int) -> Iterator[list[np.ndarray]]:
    """encode_documents of every batch, in order: in this process (`tok`) or over `workers` spawned processes."""
    if workers <= 1:
        for docs in batches:
            yield encode_documents(tok, docs, dtype, eos_id)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)  # the tokenizer's own threads, so workers don't oversubscribe
    context = multiprocessing.get_context("spawn")  # no fork of a process holding torch / tokenizer threads
    with context.Pool(workers, initializer=_start_worker, initargs=(str(tokenizer_path), threads)) as pool:
        pending: collections.deque = collections.deque()
        for docs in batches:
            pending.append(pool.apply_async(_encode_in_worker, (docs, np.dtype(dtype).str, eos_id)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def _start_worker(tokenizer_path: str, threads: int) -> None:
    global _worker_tokenizer
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # read when the tokenizer first runs in parallel
    _worker_tokenizer = load_tokenizer(tokenizer_path)


def _encode_in_worker(docs: list[str], dtype: str, eos_id: int) -> list[np.ndarray]:
    return encode_documents(_worker_tokenizer, docs, np.dtype(dtype), eos_id)
