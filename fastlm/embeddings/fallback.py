"""Plain numpy versions of the native training loops, for when fastlm._C is missing.

One thread, the same algorithms (and the same argument meanings) as csrc/cpu/word2vec_kernel.cpp
and glove_kernel.cpp, but Python loops: fine for small corpora and tests, slow for real ones.
"""
from __future__ import annotations

import math
from collections import defaultdict

import numpy as np


def word2vec_train(tokens, starts, counts, syn0, syn1neg, cbow, window, negative, sample, alpha, min_alpha,
                   epochs, seed) -> int:
    rng = np.random.default_rng(seed)
    counts = counts.astype(np.float64)
    noise = counts ** 0.75
    noise_cdf = np.cumsum(noise / noise.sum())
    keep = np.ones_like(counts)
    if sample > 0:
        threshold = sample * counts.sum()
        keep = np.minimum(1.0, (np.sqrt(counts / threshold) + 1.0) * threshold / counts)
    total, done, trained = epochs * len(tokens), 0, 0
    for _ in range(epochs):
        for s in range(len(starts) - 1):
            sentence = tokens[starts[s]:starts[s + 1]]
            done += len(sentence)
            sen = sentence[rng.random(len(sentence)) < keep[sentence]]
            a = alpha - (alpha - min_alpha) * min(1.0, done / max(total, 1))
            trained += len(sen)
            for pos, word in enumerate(sen):
                b = int(rng.integers(window))
                ctx = [sen[c] for c in range(max(0, pos - window + b), min(len(sen), pos + window - b + 1)) if c != pos]
                if not ctx:
                    continue
                if cbow:
                    h = syn0[ctx].mean(axis=0)
                    grad = _negative_step(h, word, syn1neg, negative, noise_cdf, a, rng)
                    np.add.at(syn0, ctx, grad)
                else:
                    for c in ctx:
                        syn0[c] += _negative_step(syn0[c].copy(), word, syn1neg, negative, noise_cdf, a, rng)
    return trained


def _negative_step(h, word, syn1neg, negative, noise_cdf, alpha, rng):
    grad = np.zeros_like(h)
    targets = [(word, 1.0)] + [(int(t), 0.0) for t in np.searchsorted(noise_cdf, rng.random(negative)) if t != word]
    for target, label in targets:
        target = min(target, len(syn1neg) - 1)
        f = float(h @ syn1neg[target])
        g = (label - 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, f))))) * alpha
        grad += g * syn1neg[target]
        syn1neg[target] += g * h
    return grad


def glove_cooccurrences(tokens, starts, window):
    pairs: dict[tuple[int, int], float] = defaultdict(float)
    for s in range(len(starts) - 1):
        sen = tokens[starts[s]:starts[s + 1]].tolist()
        for pos in range(len(sen)):
            for c in range(max(0, pos - window), pos):
                w = 1.0 / (pos - c)
                pairs[(sen[pos], sen[c])] += w
                pairs[(sen[c], sen[pos])] += w
    keys = sorted(pairs)
    rows = np.asarray([k[0] for k in keys], dtype=np.int32)
    cols = np.asarray([k[1] for k in keys], dtype=np.int32)
    return rows, cols, np.asarray([pairs[k] for k in keys], dtype=np.float32)


def glove_train(rows, cols, values, w, wc, b, bc, gw, gwc, gb, gbc, x_max, alpha, lr, epochs, seed):
    rng = np.random.default_rng(seed)
    weights = np.minimum(1.0, (values / x_max) ** alpha)
    logs = np.log(values)
    costs = []
    for _ in range(epochs):
        cost = 0.0
        for p in rng.permutation(len(values)):
            r, c = rows[p], cols[p]
            diff = float(w[r] @ wc[c] + b[r] + bc[c] - logs[p])
            fdiff = weights[p] * diff
            cost += 0.5 * fdiff * diff
            g1, g2 = fdiff * wc[c], fdiff * w[r]
            w[r] -= lr * g1 / np.sqrt(gw[r])
            wc[c] -= lr * g2 / np.sqrt(gwc[c])
            gw[r] += g1 * g1
            gwc[c] += g2 * g2
            b[r] -= lr * fdiff / math.sqrt(gb[r])
            bc[c] -= lr * fdiff / math.sqrt(gbc[c])
            gb[r] += fdiff * fdiff
            gbc[c] += fdiff * fdiff
        costs.append(cost / max(len(values), 1))
    return np.asarray(costs)
