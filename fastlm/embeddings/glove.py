"""GloVe (Pennington et al. 2014): weighted least squares on log co-occurrence counts, native.

    wv = train_glove(text, dim=100, window=10, epochs=25)

Counting is csrc/cpu/glove_kernel.cpp (torch.ops.fastlm.glove_cooccurrences: a symmetric window,
each pair weighted 1/distance); training is AdaGrad over the non-zero pairs in a random order per
epoch with Hogwild threads (torch.ops.fastlm.glove_train). The vectors returned are W + W_context
(glove.c's default output). Without the extension the same runs in numpy (slow).
"""
from __future__ import annotations

import time

import torch

from fastlm import _native
from fastlm.embeddings import fallback
from fastlm.embeddings.corpus import check_positive, default_threads, encode_corpus
from fastlm.embeddings.vectors import WordVectors


def train_glove(corpus, *, dim: int = 100, window: int = 10, x_max: float = 100.0, alpha: float = 0.75,
                lr: float = 0.05, epochs: int = 25, min_count: int = 5, threads: int | None = None, seed: int = 0,
                tokens: str = "words", lowercase: bool = True, tokenizer=None,
                max_vocab: int | None = None) -> WordVectors:
    """Train GloVe vectors on `corpus` (as train_word2vec takes it). `meta` holds the co-occurrence
    pairs, each epoch's cost (0.5 x mean weighted squared error), seconds and words/s."""
    check_positive(dim=dim, window=window, x_max=x_max, alpha=alpha, lr=lr, epochs=epochs)
    threads = default_threads() if threads is None else threads
    check_positive(threads=threads)
    data = encode_corpus(corpus, tokens=tokens, min_count=min_count, lowercase=lowercase, tokenizer=tokenizer,
                         max_vocab=max_vocab)
    vocab = len(data.vocab)
    start = time.perf_counter()
    if _native.AVAILABLE:
        rows, cols, values = torch.ops.fastlm.glove_cooccurrences(
            torch.from_numpy(data.tokens), torch.from_numpy(data.starts), vocab, window, threads)
    else:
        rows, cols, values = (torch.from_numpy(x) for x in fallback.glove_cooccurrences(data.tokens, data.starts, window))
    counted = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    w, wc = ((torch.rand(vocab, dim, generator=gen) - 0.5) / dim for _ in range(2))
    b, bc = ((torch.rand(vocab, generator=gen) - 0.5) / dim for _ in range(2))
    grads = [torch.ones(vocab, dim), torch.ones(vocab, dim), torch.ones(vocab), torch.ones(vocab)]
    hyper = (float(x_max), float(alpha), float(lr), epochs)
    if _native.AVAILABLE:
        costs = torch.ops.fastlm.glove_train(rows, cols, values, w, wc, b, bc, *grads, *hyper, threads, seed).tolist()
    else:
        costs = fallback.glove_train(rows.numpy(), cols.numpy(), values.numpy(), w.numpy(), wc.numpy(), b.numpy(),
                                     bc.numpy(), *(g.numpy() for g in grads), *hyper, seed).tolist()
    seconds = time.perf_counter() - start
    meta = {"method": "glove", "vocab_size": vocab, "corpus_words": len(data.tokens),
            "sentences": int(len(data.starts) - 1), "pairs": len(values), "costs": costs,
            "count_seconds": counted - start, "seconds": seconds,
            "words_per_s": len(data.tokens) * epochs / max(seconds, 1e-9), "threads": threads,
            "native": _native.AVAILABLE}
    return WordVectors(data.vocab.words, w + wc, meta)
