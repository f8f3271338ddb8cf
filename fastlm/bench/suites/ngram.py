"""n-gram language models: fastlm.lm.NGramLM (native counting and queries) against NLTK's nltk.lm.

Both estimate an interpolated Kneser-Ney model from the same tokens of the built-in corpus and score
the same validation tokens, in the same run. NLTK is pure Python and its Kneser-Ney queries scan its
count tables, so it gets a modest slice (`nltk_tokens` to fit, `query_tokens` to score); fastlm
is timed on exactly those tokens (the speedup rows) and alone on the whole corpus (order 3 and 5).
Rows report tokens/s of each side and the threads fastlm ran on.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from fastlm.bench.registry import Options, Suite
from fastlm.bench.timing import time_callable


def _sentences(docs: list[np.ndarray], budget: int, length: int = 64) -> list[np.ndarray]:
    """Up to `budget` tokens as sentence-sized pieces (what NLTK is used on)."""
    out, total = [], 0
    for doc in docs:
        for i in range(0, len(doc), length):
            piece = doc[i:i + length][: budget - total]
            if len(piece):
                out.append(piece)
                total += len(piece)
            if total >= budget:
                return out
    return out


def _nltk_fit(sentences, order: int):
    from nltk.lm import KneserNeyInterpolated
    from nltk.lm.preprocessing import padded_everygram_pipeline

    model = KneserNeyInterpolated(order, discount=0.75)
    text, vocab = padded_everygram_pipeline(order, [[str(t) for t in s] for s in sentences])
    model.fit(text, vocab)
    return model


def _nltk_query(model, sentences, order: int) -> float:
    total = 0.0
    for s in sentences:
        words = ["<s>"] * (order - 1) + [str(t) for t in s]
        for t in range(order - 1, len(words)):
            total += model.logscore(words[t], words[t - order + 1:t])
    return total


def _row(case: str, threads: int, ours: float, nltk: float | None = None, speedup: float | None = None,
         perplexity: float | None = None) -> dict:
    return {"case": case, "threads": threads, "fastlm_tokens_per_s": ours, "nltk_tokens_per_s": nltk,
            "speedup": speedup, "perplexity": perplexity}


def measure(options: Options, nltk_tokens: int | None = None, query_tokens: int | None = None,
            order: int = 3) -> list[dict]:
    from fastlm.data import prepare_corpus
    from fastlm.lm import NGramLM
    from fastlm.lm.ngram import split_documents

    nltk_tokens = nltk_tokens or (5_000 if options.quick else 20_000)
    query_tokens = query_tokens or (100 if options.quick else 300)
    corpus = prepare_corpus("builtin", vocab_size=4096, show_progress=False)
    train = split_documents(corpus.train_tokens, corpus.eos_id)
    val = split_documents(corpus.val_tokens, corpus.eos_id)
    threads = torch.get_num_threads()
    repeat = options.repeats(5)
    rows = []

    fit_slice = _sentences(train, nltk_tokens)
    query_slice = _sentences(val, query_tokens)
    n_fit, n_query = sum(map(len, fit_slice)), sum(map(len, query_slice))
    ours = time_callable("fastlm", lambda: NGramLM.fit(fit_slice, order=order, smoothing="kneser_ney",
                                                       discount=0.75), repeat=repeat)
    start = time.perf_counter()
    nltk_model = _nltk_fit(fit_slice, order)
    nltk_fit_s = time.perf_counter() - start
    rows.append(_row(f"estimate order {order}, {n_fit} tokens", threads, n_fit / ours.seconds, n_fit / nltk_fit_s,
                     nltk_fit_s / ours.seconds))

    lm = NGramLM.fit(fit_slice, order=order, smoothing="kneser_ney", discount=0.75)
    ours_q = time_callable("fastlm", lambda: lm.logprob(query_slice), repeat=repeat)
    start = time.perf_counter()
    _nltk_query(nltk_model, query_slice, order)
    nltk_query_s = time.perf_counter() - start
    rows.append(_row(f"query order {order}, {n_query} tokens", threads, n_query / ours_q.seconds,
                     n_query / nltk_query_s, nltk_query_s / ours_q.seconds))

    # fastlm alone on the whole corpus (no baseline can run it in this time)
    n_train, n_val = sum(map(len, train)), sum(map(len, val))
    for full_order in (3, 5):
        fit = time_callable("fastlm", lambda o=full_order: NGramLM.fit(train, order=o, vocab_size=corpus.vocab_size),
                            warmup=1, repeat=max(2, repeat // 2))
        model = NGramLM.fit(train, order=full_order, vocab_size=corpus.vocab_size)
        query = time_callable("fastlm", lambda m=model: m.logprob(val), warmup=1, repeat=repeat)
        rows.append(_row(f"whole corpus, order {full_order} modified KN: estimate {n_train} tokens", threads,
                         n_train / fit.seconds))
        rows.append(_row(f"whole corpus, order {full_order}: query {n_val} tokens", threads, n_val / query.seconds,
                         perplexity=model.perplexity(val)))
    return rows


SUITE = Suite(name="ngram", baseline="nltk.lm KneserNeyInterpolated", run=measure, devices=("cpu",))
