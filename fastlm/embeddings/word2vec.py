"""word2vec: skip-gram and CBOW with negative sampling (Mikolov et al. 2013), native training.

    wv = train_word2vec(text, method="skipgram", dim=100, epochs=5)
    wv.most_similar("dict")

The loop is csrc/cpu/word2vec_kernel.cpp (torch.ops.fastlm.word2vec_train): Hogwild threads over
sentence ranges, subsampling of frequent words, unigram^0.75 noise words, a reduced window per
centre word and a learning rate decaying linearly from alpha to min_alpha. Without the extension
(fastlm._native.AVAILABLE is False) the same algorithm runs in numpy on one thread (slow).
"""
from __future__ import annotations

import time

import torch

from fastlm import _native
from fastlm.embeddings import fallback
from fastlm.embeddings.corpus import check_positive, default_threads, encode_corpus
from fastlm.embeddings.vectors import WordVectors

METHODS = ("skipgram", "cbow")
DEFAULT_ALPHA = {"skipgram": 0.025, "cbow": 0.05}


def train_word2vec(corpus, *, method: str = "skipgram", dim: int = 100, window: int = 5, negative: int = 5,
                   min_count: int = 5, sample: float = 1e-3, alpha: float | None = None, min_alpha: float = 1e-4,
                   epochs: int = 5, threads: int | None = None, seed: int = 0, tokens: str = "words",
                   lowercase: bool = True, tokenizer=None, max_vocab: int | None = None) -> WordVectors:
    """Train word vectors on `corpus` (a text, an iterable of texts, or tokenized sentences; each
    line of a text is a sentence).

    alpha defaults to 0.025 (skip-gram) or 0.05 (CBOW), as in word2vec.c and gensim. threads
    defaults to the CPUs this process may use. tokens="bpe" trains on the token strings of
    `tokenizer` instead of regex words. The result's `meta` holds words/s, seconds and sizes:
    words/s counts the corpus words in the vocabulary times epochs (before subsampling), as
    gensim's progress log does.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    check_positive(dim=dim, window=window, epochs=epochs)
    if negative < 1:
        raise ValueError(f"negative must be >= 1 (this is negative sampling), got {negative}")
    if sample < 0:
        raise ValueError(f"sample must be >= 0 (0 turns subsampling off), got {sample}")
    alpha = DEFAULT_ALPHA[method] if alpha is None else alpha
    check_positive(alpha=alpha)
    if not 0 <= min_alpha <= alpha:
        raise ValueError(f"min_alpha must be in [0, alpha = {alpha}], got {min_alpha}")
    threads = default_threads() if threads is None else threads
    check_positive(threads=threads)
    data = encode_corpus(corpus, tokens=tokens, min_count=min_count, lowercase=lowercase, tokenizer=tokenizer,
                         max_vocab=max_vocab)
    vocab = len(data.vocab)
    gen = torch.Generator().manual_seed(seed)
    syn0 = (torch.rand(vocab, dim, generator=gen) - 0.5) / dim  # word2vec.c's initialisation
    syn1neg = torch.zeros(vocab, dim)
    args = (method == "cbow", window, negative, float(sample), float(alpha), float(min_alpha), epochs)
    start = time.perf_counter()
    if _native.AVAILABLE:
        trained = torch.ops.fastlm.word2vec_train(torch.from_numpy(data.tokens), torch.from_numpy(data.starts),
                                                  torch.from_numpy(data.vocab.counts), syn0, syn1neg, *args,
                                                  threads, seed)
    else:
        trained = fallback.word2vec_train(data.tokens, data.starts, data.vocab.counts, syn0.numpy(),
                                          syn1neg.numpy(), *args, seed)
    seconds = time.perf_counter() - start
    words = len(data.tokens) * epochs
    meta = {"method": method, "vocab_size": vocab, "corpus_words": len(data.tokens),
            "sentences": int(len(data.starts) - 1), "words_trained": int(trained), "seconds": seconds,
            "words_per_s": words / max(seconds, 1e-9), "threads": threads, "native": _native.AVAILABLE}
    return WordVectors(data.vocab.words, syn0, meta)
