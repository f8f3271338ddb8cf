"""A plain-Python n-gram model written from the definitions (Chen & Goodman 1998; KenLM's conventions),
the oracle of tests/lm/test_ngram.py. It computes p(w | h) by the interpolation recursion itself,
straight from counts of the padded documents; nothing is shared with fastlm.lm.

Conventions (KenLM's lmplz): a document is `<s> w1 .. wk </s>`; <s> is never predicted; the highest
order and n-grams starting with <s> use raw counts, the other lower-order n-grams their continuation
counts N1+(. g); the bottom level is the uniform distribution over the vocabulary plus </s> and <unk>.
"""
from __future__ import annotations

import math
from collections import Counter

BOS, EOS, UNK = "<s>", "</s>", "<unk>"


class ReferenceLM:
    def __init__(self, docs, order, smoothing, vocab=None, k=1.0, discount=None, prune=None):
        self.order, self.smoothing, self.k = order, smoothing, k
        padded = [[BOS] + [int(t) for t in d] + [EOS] for d in docs]
        seen = {t for d in padded for t in d[1:-1]}
        self.vocab = set(range(vocab)) if vocab is not None else seen
        self.size = len(self.vocab) + 2  # + </s> + <unk>
        # raw[n][gram]: occurrences of the n-gram inside a padded document
        self.raw = {n: Counter(tuple(d[i:i + n]) for d in padded for i in range(len(d) - n + 1))
                    for n in range(1, order + 1)}
        self.raw[1].pop((BOS,), None)
        self.counts = {n: self._count_table(n) for n in range(1, order + 1)}
        self.discounts = {n: self._discounts(n, discount) for n in range(1, order + 1)}
        thresholds = list(prune or [0]) + [list(prune or [0])[-1]] * order
        self.pruned = {n: {g for g, c in self.raw[n].items() if n >= 2 and c <= thresholds[n - 1]}
                       for n in range(1, order + 1)}

    def _count_table(self, n):
        if self.smoothing in ("witten_bell", "add_k") or n == self.order:
            return dict(self.raw[n])
        table = {}
        for gram, count in self.raw[n].items():
            if gram[0] == BOS:
                table[gram] = count
            else:
                table[gram] = sum(1 for longer in self.raw[n + 1] if longer[1:] == gram)
        return table

    def counts_of_counts(self, n):
        return [sum(1 for c in self.counts[n].values() if c == x) for x in (1, 2, 3, 4)]

    def _discounts(self, n, fixed):
        if self.smoothing in ("witten_bell", "add_k"):
            return (0.0, 0.0, 0.0)
        if fixed is not None:
            if self.smoothing == "kneser_ney":
                d = fixed if isinstance(fixed, (int, float)) else fixed[n - 1]
                return (d, d, d)
            return tuple(fixed) if len(fixed) == 3 and not isinstance(fixed[0], (list, tuple)) else tuple(fixed[n - 1])
        t1, t2, t3, t4 = self.counts_of_counts(n)
        if self.smoothing == "kneser_ney":
            return (t1 / (t1 + 2 * t2),) * 3 if t1 else (0.5,) * 3
        if 0 in (t1, t2, t3):  # lmplz's test: Chen & Goodman's estimates need n1, n2, n3
            return (0.5, 1.0, 1.5)
        y = t1 / (t1 + 2 * t2)
        d = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
        return d if all(0 <= d[i] <= i + 1 for i in range(3)) else (0.5, 1.0, 1.5)

    def _d(self, n, count):
        return 0.0 if count == 0 else self.discounts[n][min(count, 3) - 1]

    def prob(self, word, history):
        """p(word | history); history a tuple of ids and possibly a leading <s>."""
        history = tuple(history)[-(self.order - 1):] if self.order > 1 else ()
        n = len(history) + 1
        extensions = {g: c for g, c in self.counts[n].items() if g[:-1] == history}
        if n > 1 and not extensions:  # an unseen context: defer to the shorter one
            return self.prob(word, history[1:])
        lower = 1.0 / self.size if n == 1 else self.prob(word, history[1:])
        den = sum(c for g, c in extensions.items() if not (n == 1 and g == (UNK,)))
        gnum = sum(c if g in self.pruned[n] else self._d(n, c) for g, c in extensions.items())
        if self.smoothing == "witten_bell":
            types = sum(1 for c in extensions.values() if c > 0)
            den, gnum = den + types, gnum + types
        elif self.smoothing == "add_k":
            den, gnum = den + self.k * self.size, gnum + self.k * self.size
        gram = history + (word,)
        c = extensions.get(gram, 0)
        own = 0.0 if gram in self.pruned[n] else (c - self._d(n, c)) / den
        return own + gnum / den * lower

    def logprob(self, word, history):
        if word != EOS and word not in self.vocab:
            word = UNK
        history = tuple(h if h == BOS or h in self.vocab else UNK for h in history)
        return math.log(self.prob(word, history))
