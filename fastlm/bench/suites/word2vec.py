"""word2vec training speed and neighbour agreement: fastlm against gensim's Word2Vec.

Both train on the same sentences (the built-in corpus as regex words, one sentence per line) with
the same settings (dim, window, negative, sample, min_count, epochs, alpha) and the same number of
threads (gensim's `workers`), in the same run. `words_per_s` counts the corpus words in the
vocabulary times epochs over the training time alone (the vocabulary is built beforehand for
both); `speedup` = fastlm's words/s / gensim's.

Quality: `overlap@10` is the mean share of the 10 nearest neighbours (cosine, shared vocabulary)
two models agree on, over the most frequent words. fastlm vs gensim is meaningful only next to
gensim vs gensim with another seed (the run-to-run agreement of one implementation).
"""
from __future__ import annotations

import statistics
import time

import numpy as np

from fastlm.bench.registry import Options, Suite

SETTINGS = {"dim": 100, "window": 5, "negative": 5, "sample": 1e-3, "min_count": 5, "epochs": 5}
PROBE_WORDS = 200  # the most frequent words whose neighbours are compared
K = 10


def corpus_sentences() -> list[list[str]]:
    from fastlm.data.sources import resolve_source
    from fastlm.embeddings.vocab import word_sentences

    return word_sentences(list(resolve_source("builtin").documents()))


def train_fastlm(sentences, method: str, threads: int, seed: int, settings: dict):
    from fastlm.embeddings import train_word2vec

    wv = train_word2vec(sentences, method=method, threads=threads, seed=seed, **settings)
    return wv.words, wv.vectors.numpy(), wv.meta["seconds"], wv.meta["corpus_words"] * settings["epochs"]


def train_gensim(sentences, method: str, threads: int, seed: int, settings: dict):
    from gensim.models import Word2Vec

    model = Word2Vec(vector_size=settings["dim"], window=settings["window"], negative=settings["negative"],
                     sample=settings["sample"], min_count=settings["min_count"], sg=int(method == "skipgram"),
                     hs=0, workers=threads, seed=seed, alpha=0.025 if method == "skipgram" else 0.05,
                     min_alpha=1e-4)
    model.build_vocab(sentences)
    start = time.perf_counter()
    model.train(sentences, total_examples=model.corpus_count, epochs=settings["epochs"])
    seconds = time.perf_counter() - start
    words = sum(1 for s in sentences for w in s if w in model.wv.key_to_index) * settings["epochs"]
    return list(model.wv.index_to_key), model.wv.vectors.copy(), seconds, words


def neighbour_overlap(a, b, probes: list[str], k: int = K) -> float:
    """Mean |top-k(a) & top-k(b)| / k over `probes`, neighbours taken within the shared vocabulary."""
    words_a, vec_a = a
    words_b, vec_b = b
    shared = sorted(set(words_a) & set(words_b))
    ia, ib = {w: i for i, w in enumerate(words_a)}, {w: i for i, w in enumerate(words_b)}
    sa = _unit(vec_a[[ia[w] for w in shared]])
    sb = _unit(vec_b[[ib[w] for w in shared]])
    pos = {w: i for i, w in enumerate(shared)}
    scores = []
    for w in probes:
        if w not in pos:
            continue
        i = pos[w]
        na, nb = _top(sa, i, k), _top(sb, i, k)
        scores.append(len(na & nb) / k)
    return float(np.mean(scores)) if scores else float("nan")


def _unit(m: np.ndarray) -> np.ndarray:
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)


def _top(unit: np.ndarray, i: int, k: int) -> set[int]:
    s = unit @ unit[i]
    s[i] = -np.inf
    return set(np.argpartition(-s, k)[:k].tolist())


def measure(options: Options, methods=("skipgram", "cbow"), threads: int | None = None,
            settings: dict | None = None) -> list[dict]:
    from fastlm.embeddings.corpus import default_threads

    threads = threads or default_threads()
    settings = {**SETTINGS, **(settings or {})}
    if options.quick:
        settings["epochs"] = min(settings["epochs"], 2)
    sentences = corpus_sentences()
    repeats = max(2, options.repeats(3))  # two seeds at least: the run-to-run overlap needs them
    rows = []
    for method in methods:
        ours, theirs = [], []
        for r in range(repeats):  # alternate, so a noisy neighbour slows both alike
            ours.append(train_fastlm(sentences, method, threads, r, settings))
            theirs.append(train_gensim(sentences, method, threads, r, settings))
        fast_wps = statistics.median(w / s for _, _, s, w in ours)
        gensim_wps = statistics.median(w / s for _, _, s, w in theirs)
        probes = theirs[0][0][:PROBE_WORDS]
        rows.append({
            "case": method, "threads": threads, "epochs": settings["epochs"], "vocab": len(ours[0][0]),
            "fastlm_words_per_s": fast_wps, "gensim_words_per_s": gensim_wps, "speedup": fast_wps / gensim_wps,
            "overlap_fastlm_gensim": neighbour_overlap(ours[0][:2], theirs[0][:2], probes),
            "overlap_gensim_gensim": neighbour_overlap(theirs[0][:2], theirs[1][:2], probes),
            "overlap_fastlm_fastlm": neighbour_overlap(ours[0][:2], ours[1][:2], probes),
        })
    return rows


SUITE = Suite(name="word2vec", baseline="gensim Word2Vec (same corpus, settings, threads)", run=measure,
              devices=("cpu",))
