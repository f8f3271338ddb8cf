"""Plain-Python n-gram estimation and query: what runs when fastlm._C is missing (slow, same results).

It follows csrc/cpu/ngram_count.cpp and ngram_query.cpp step by step (dicts of tuples instead of
sorted packed keys), so it shares their conventions: internal ids 0..V-1, V = </s>, V+1 = <s>,
V+2 = <unk>; KenLM's adjusted counts; interpolated probabilities stored in backoff form.
"""
from __future__ import annotations

import itertools
import math
import weakref
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np
import torch

from fastlm.lm import ngram_keys

LOG_ZERO = -99.0 * math.log(10.0)  # ARPA's -99 (log10), p(<s>)
MODIFIED_KN, KN, WITTEN_BELL, ADD_K = 0, 1, 2, 3


def _documents(stream: np.ndarray, bos: int) -> list[list[int]]:
    starts = np.flatnonzero(stream == bos).tolist() + [len(stream)]
    return [stream[a:b].tolist() for a, b in itertools.pairwise(starts)]


def _counts(docs: list[list[int]], order: int, bos: int) -> tuple[list[Counter], list[Counter]]:
    raw = [Counter() for _ in range(order)]
    for doc in docs:
        for n in range(1, order + 1):
            for i in range(len(doc) - n + 1):
                raw[n - 1][tuple(doc[i:i + n])] += 1
    adjusted = [Counter() for _ in range(order)]
    adjusted[order - 1] = Counter(raw[order - 1])
    for n in range(order - 1, 0, -1):
        for gram in raw[n]:  # distinct (n+1)-grams: one left extension each
            adjusted[n - 1][gram[1:]] += 1
        for gram, count in raw[n - 1].items():
            if gram[0] == bos:
                adjusted[n - 1][gram] = count
    return raw, adjusted


def _discounts(smoothing: int, t: list[int]) -> list[float]:
    if smoothing in (WITTEN_BELL, ADD_K):
        return [0.0, 0.0, 0.0]
    if t[0] == 0 or (smoothing == MODIFIED_KN and 0 in t[:3]):  # KenLM needs t1..t3 (t4 = 0: D3+ = 3)
        return [0.5, 0.5, 0.5] if smoothing == KN else [0.5, 1.0, 1.5]
    y = t[0] / (t[0] + 2.0 * t[1])
    if smoothing == KN:
        return [y, y, y]
    d = [k - (k + 1) * y * t[k] / t[k - 1] for k in (1, 2, 3)]
    return d if all(0.0 <= d[k - 1] <= k for k in (1, 2, 3)) else [0.5, 1.0, 1.5]


def _discount(d: list[float], count: int) -> float:
    return 0.0 if count == 0 else d[min(count, 3) - 1]


def estimate(stream: np.ndarray, *, order: int, smoothing: int, bits: int, vocab_size: int, all_vocab: bool,
             k: float, discounts: Sequence[float], prune: Sequence[int]):
    V = vocab_size
    eos, bos, unk = V, V + 1, V + 2
    raw, adjusted = _counts(_documents(np.asarray(stream), bos), order, bos)
    for word in (list(range(V)) if all_vocab else []) + [eos, bos, unk]:
        raw[0].setdefault((word,), 0)
        adjusted[0].setdefault((word,), 0)
    raw[0][(bos,)] = adjusted[0][(bos,)] = 0
    counts = adjusted if smoothing in (MODIFIED_KN, KN) else raw

    used, coc, pruned = [], [], []
    for n in range(1, order + 1):
        t = [sum(1 for c in counts[n - 1].values() if c == x) for x in (1, 2, 3, 4)]
        coc.append(t)
        used.append(list(discounts[3 * (n - 1):3 * n]) if discounts else _discounts(smoothing, t))
        threshold = prune[n - 1] if n >= 2 and len(prune) >= n else 0
        pruned.append({g for g, c in raw[n - 1].items() if threshold > 0 and c <= threshold})

    uniform_size = len(counts[0]) - 1.0
    log_prob: list[dict] = [{} for _ in range(order)]
    log_backoff: list[dict] = [defaultdict(float) for _ in range(order)]
    for n in range(1, order + 1):
        groups: dict[tuple, list[tuple]] = defaultdict(list)
        for gram in counts[n - 1]:
            groups[gram[:-1]].append(gram)
        d = used[n - 1]
        for context, grams in groups.items():
            den = float(sum(counts[n - 1][g] for g in grams))
            types = float(sum(1 for g in grams if counts[n - 1][g] > 0))
            gnum = sum(counts[n - 1][g] if g in pruned[n - 1] else _discount(d, counts[n - 1][g]) for g in grams)
            if smoothing == WITTEN_BELL:
                den, gnum = den + types, gnum + types
            elif smoothing == ADD_K:
                den, gnum = den + k * uniform_size, gnum + k * uniform_size
            gamma = gnum / den if den > 0 else 1.0
            for g in grams:
                if n == 1 and g[0] == bos:
                    log_prob[0][g] = LOG_ZERO
                    continue
                lower = 1.0 / uniform_size if n == 1 else math.exp(log_prob[n - 2].get(g[1:], -math.inf))
                c = counts[n - 1][g]
                p = (c - _discount(d, c)) / den + gamma * lower if den > 0 else gamma * lower
                log_prob[n - 1][g] = math.log(p) if p > 0 else LOG_ZERO
            if n > 1:
                log_backoff[n - 2][context] = math.log(gamma) if gamma > 0 else LOG_ZERO

    tables = []
    for n in range(1, order + 1):
        grams = sorted(g for g in log_prob[n - 1] if g not in pruned[n - 1])
        ids = np.array(grams, dtype=np.int64).reshape(len(grams), n)
        keys = ngram_keys.pack(ids, bits)
        perm = ngram_keys.sort_permutation(keys)
        lp = np.array([log_prob[n - 1][g] for g in grams], dtype=np.float64)[perm]
        bo = np.array([log_backoff[n - 1].get(g, 0.0) for g in grams], dtype=np.float64)[perm]
        tables.append((torch.from_numpy(np.ascontiguousarray(keys[perm])), torch.from_numpy(lp), torch.from_numpy(bo)))
    return (tables, torch.tensor(used, dtype=torch.float64).reshape(order, 3),
            torch.tensor(coc, dtype=torch.int64).reshape(order, 4))


_LOOKUPS: dict[int, list[dict]] = {}  # id(unigram keys tensor) -> maps, dropped with the tensor


def _lookups(tables, bits: int) -> list[dict]:
    """Per order: n-gram tuple -> (log_prob, log_backoff), built once per model."""
    key = id(tables[0][0])
    if key not in _LOOKUPS:
        maps = []
        for n, (keys, lp, bo) in enumerate(tables, start=1):
            ids = ngram_keys.unpack(keys.numpy(), n, bits)
            maps.append({tuple(row): (p, b) for row, p, b in zip(ids.tolist(), lp.tolist(), bo.tolist())})
        _LOOKUPS[key] = maps
        weakref.finalize(tables[0][0], _LOOKUPS.pop, key, None)
    return _LOOKUPS[key]


def query(tables, bits: int, unk_log_prob: float, tokens: torch.Tensor, lengths: torch.Tensor,
          start: int) -> torch.Tensor:
    maps = _lookups(tables, bits)
    order = len(tables)
    rows = tokens.tolist()
    out = torch.zeros(len(rows), tokens.shape[1] - start, dtype=torch.float64)
    for r, row in enumerate(rows):
        for t in range(start, int(lengths[r])):
            word = row[t]
            if (word,) not in maps[0]:
                out[r, t - start] = unk_log_prob
                continue
            backoffs, context_length = [], 0
            for j in range(1, min(order - 1, t) + 1):
                entry = maps[j - 1].get(tuple(row[t - j:t]))
                if entry is None:
                    break
                backoffs.append(entry[1])
                context_length = j
            log_prob, match = maps[0][(word,)][0], 0
            for j in range(1, context_length + 1):
                entry = maps[j].get(tuple(row[t - j:t + 1]))
                if entry is None:
                    break
                log_prob, match = entry[0], j
            out[r, t - start] = log_prob + sum(backoffs[match:context_length])
    return out
