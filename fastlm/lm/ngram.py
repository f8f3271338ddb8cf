"""n-gram language models: modified Kneser-Ney (as KenLM's lmplz estimates it) and friends.

    lm = NGramLM.fit(docs, order=5)                  # docs: a 1-D id tensor/array or an iterable of them
    lm.logprob(ids)                                   # natural-log p of each token given its history
    lm.perplexity(val_ids); lm.to_arpa("m.arpa"); NGramLM.from_arpa("m.arpa")

Each document is a sentence to KenLM: `<s> doc </s>`. Counting, smoothing and queries run in C++
(csrc/cpu/ngram*.cpp, threads via torch's pool); without fastlm._C a plain-Python fallback gives the
same numbers, slowly. The model is stored as KenLM writes it (ARPA form): for every stored n-gram its
interpolated probability and for every context its backoff, so a query is a backoff lookup.

Ids: the vocabulary is 0..vocab_size-1; internally </s> = vocab_size, <s> = vocab_size+1 and
<unk> = vocab_size+2. An id the model does not know (negative, >= vocab_size, or never seen when
vocab_size was not given) is <unk>, whose probability is the interpolated leftover mass (never 0).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from fastlm.lm import ngram_arpa, ngram_backend, ngram_keys
from fastlm.lm.ngram_backend import SMOOTHING_CODES, Table
from fastlm.nn.sampling import check_sampling, sample_next_token

SMOOTHINGS = tuple(SMOOTHING_CODES)
UNK_LOG_PROB_MISSING = -100.0 * math.log(10.0)  # KenLM's p(<unk>) for an ARPA file without <unk>

# One sequence of ids, or several (documents / rows).
Ids = torch.Tensor | np.ndarray | Sequence[int]


def _as_ids(x: Ids, what: str) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim != 1:
        raise ValueError(f"{what} must be 1-D id sequences, got shape {tuple(array.shape)}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must hold integer token ids, got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _documents(token_ids: Ids | Iterable[Ids]) -> list[np.ndarray]:
    """A 1-D tensor/array/list of ints is one document; a 2-D tensor/array or an iterable, several."""
    if isinstance(token_ids, (torch.Tensor, np.ndarray)):
        if token_ids.ndim == 1:
            return [_as_ids(token_ids, "token_ids")]
        if token_ids.ndim == 2:
            return [_as_ids(row, "token_ids") for row in token_ids]
        raise ValueError(f"token_ids must be 1-D (one document) or 2-D (rows of documents), got {token_ids.ndim}-D")
    items = list(token_ids)
    if items and all(isinstance(x, (int, np.integer)) for x in items):
        return [_as_ids(items, "token_ids")]
    return [_as_ids(doc, "each document of token_ids") for doc in items]


def split_documents(tokens: Ids, separator: int) -> list[np.ndarray]:
    """A token stream with documents separated by `separator` (e.g. a corpus' eos id) -> the documents,
    without the separator (NGramLM adds <s> and </s> itself); empty documents are dropped."""
    ids = _as_ids(tokens, "tokens")
    pieces = np.split(ids, np.flatnonzero(ids == separator))  # every piece but the first starts with it
    docs = pieces[:1] + [p[1:] for p in pieces[1:]]
    return [d for d in docs if len(d)]


class NGramLM:
    """An n-gram model in backoff (ARPA) form. Build it with `fit` or `from_arpa`.

    Attributes: order, vocab_size, smoothing ("modified_kneser_ney", "kneser_ney", "witten_bell",
    "add_k", or "arpa" for a model read from a file), discounts ((order, 3) tensor of D1, D2, D3+ as
    used, None when read from ARPA), words (None, or the strings of the ids of an ARPA file whose
    words are not decimal ids).
    """

    def __init__(self, tables: list[Table], *, vocab_size: int, smoothing: str, discounts: torch.Tensor | None = None,
                 counts_of_counts: torch.Tensor | None = None, words: list[str] | None = None) -> None:
        self.order = len(tables)
        self.vocab_size = int(vocab_size)
        self.smoothing = smoothing
        self.discounts = discounts
        self.counts_of_counts = counts_of_counts
        self.words = words
        self.bits = ngram_keys.bits_for(self.vocab_size)
        if self.order * self.bits > 128:
            raise ValueError(f"order {self.order} with a vocabulary of {self.vocab_size} ids needs "
                             f"{self.order * self.bits} key bits; at most 128 are supported")
        self.tables = tables
        self.eos, self.bos, self.unk = self.vocab_size, self.vocab_size + 1, self.vocab_size + 2
        unigram_ids = ngram_keys.unpack(tables[0][0].numpy(), 1, self.bits)[:, 0]
        self._known = torch.zeros(self.vocab_size + 3, dtype=torch.bool)  # ids with a unigram entry
        self._known[torch.from_numpy(unigram_ids)] = True
        self.unk_log_prob = 0.0 if bool(self._known[self.unk]) else UNK_LOG_PROB_MISSING
        ids = torch.arange(self.vocab_size, dtype=torch.int64)  # id -> itself if known, else <unk>
        self._id_map = torch.where(self._known[:self.vocab_size], ids, torch.full_like(ids, self.unk))
        self._index = ngram_backend.hash_index(tables)

    # ----------------------------------------------------------------------------------- estimation
    @classmethod
    def fit(cls, token_ids: Ids | Iterable[Ids], order: int = 5, smoothing: str = "modified_kneser_ney",
            vocab_size: int | None = None, prune: Sequence[int] | None = None, k: float = 1.0,
            discount: float | Sequence[float] | Sequence[Sequence[float]] | None = None) -> NGramLM:
        """Estimate an interpolated n-gram model from documents of token ids.

        token_ids: a 1-D integer tensor/array (one document) or an iterable of them (or a 2-D tensor,
            one document per row). Each is scored as KenLM scores a sentence: `<s> doc </s>`.
        smoothing: "modified_kneser_ney" (D1, D2, D3+ per order from the counts of counts, KenLM's
            adjusted counts: raw counts at the highest order and for n-grams starting with <s>,
            continuation counts below; KenLM's fallback discounts 0.5, 1, 1.5 where the estimate fails),
            "kneser_ney" (one discount per order, t1 / (t1 + 2 t2), or `discount`),
            "witten_bell" (raw counts; gamma(h) = N1+(h.) / (c(h) + N1+(h.))), or
            "add_k" (raw counts, p(w|h) = (c(hw) + k U p(w|h')) / (c(h) + k U), U the vocabulary size
            with </s> and <unk>: plain add-k at the unigram level, backing off to the lower order above).
            Every one interpolates down to the uniform distribution over the vocabulary + </s> + <unk>.
        vocab_size: V -> the vocabulary is 0..V-1 (training ids must be below V; unseen ids get
            probability through the uniform level); None -> the ids seen in training.
        prune: per-order raw-count thresholds as KenLM's --prune: n-grams of order n >= 2 seen at most
            prune[n-1] times are dropped (their mass goes to the context's backoff, so the model still
            sums to 1); the last value repeats for higher orders; prune[0] must be 0 and the values
            non-decreasing (so every kept n-gram keeps its prefix and suffix).
        k: the add_k constant (> 0). discount: fixed discounts instead of the estimates — kneser_ney: a
            float or one per order, in [0, 1] (0 at order 1 = NLTK's KneserNeyInterpolated, whose unigrams
            are continuation counts without the uniform level; unseen words then score e^(-99 ln 10),
            ARPA's -99); modified_kneser_ney: (D1, D2, D3+) or one triple per order,
            0 < Dk <= k.
        """
        if not isinstance(order, (int, np.integer)) or isinstance(order, bool) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        order = int(order)
        if smoothing not in SMOOTHING_CODES:
            raise ValueError(f"smoothing must be one of {', '.join(SMOOTHINGS)}, got {smoothing!r}")
        if smoothing == "add_k" and not (isinstance(k, (int, float)) and k > 0 and math.isfinite(k)):
            raise ValueError(f"k must be a positive number, got {k!r}")
        docs = _documents(token_ids)
        if not docs or sum(len(d) for d in docs) == 0:
            raise ValueError("empty corpus: token_ids has no tokens")
        # One copy of the tokens, `<s> doc </s>` ...; the markers get their ids once V is known.
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        eos_at = np.cumsum(lengths + 2) - 1
        bos_at = eos_at - lengths - 1
        zero = np.zeros(1, dtype=np.int64)
        stream = np.concatenate([part for doc in docs for part in (zero, doc, zero)])
        del docs
        is_word = np.ones(stream.size, dtype=bool)
        is_word[bos_at] = is_word[eos_at] = False
        low = int(np.min(stream, where=is_word, initial=np.iinfo(np.int64).max))
        high = int(np.max(stream, where=is_word, initial=-1))
        del is_word
        if low < 0:
            raise ValueError(f"token ids must be >= 0, got {low}")
        if vocab_size is not None:
            if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
                raise ValueError(f"vocab_size must be a positive integer or None, got {vocab_size!r}")
            if high >= vocab_size:
                raise ValueError(f"token id {high} is outside the vocabulary 0..{vocab_size - 1} "
                                 f"(vocab_size={vocab_size})")
        V = int(vocab_size) if vocab_size is not None else high + 1
        bits = ngram_keys.bits_for(V)
        if order * bits > 128:
            raise ValueError(f"order {order} with {V} ids needs {order * bits} key bits; at most 128 are supported")
        discounts = _discount_list(discount, smoothing, order)
        prune_list = _prune_list(prune, order)

        stream[bos_at], stream[eos_at] = V + 1, V
        result = ngram_backend.estimate(stream, order=order, smoothing=smoothing, bits=bits, vocab_size=V,
                                        all_vocab=vocab_size is not None, k=float(k), discounts=discounts,
                                        prune=prune_list)
        return cls(result.tables, vocab_size=V, smoothing=smoothing, discounts=result.discounts,
                   counts_of_counts=result.counts_of_counts)

    # ---------------------------------------------------------------------------------------- query
    def _internal(self, ids: torch.Tensor) -> torch.Tensor:
        """User ids -> internal ids: unknown ones (outside 0..V-1 or without a unigram) -> <unk>."""
        ids = ids.to(torch.int64)
        inside = (ids >= 0) & (ids < self.vocab_size)
        mapped = self._id_map[ids.clamp(0, max(self.vocab_size - 1, 0))] if self.vocab_size else ids
        return torch.where(inside, mapped, torch.full_like(ids, self.unk))

    def _score_rows(self, rows: torch.Tensor, lengths: torch.Tensor, bos: bool, eos: bool) -> torch.Tensor:
        """rows (B, T) user ids, lengths (B,) -> (B, T + eos) log-probs (0 past a row's end)."""
        B, T = rows.shape
        width = T + int(bos) + int(eos)
        internal = torch.full((B, max(width, 1)), self.eos, dtype=torch.int64)
        offset = int(bos)
        if bos:
            internal[:, 0] = self.bos
        internal[:, offset:offset + T] = self._internal(rows)
        if eos:
            internal[torch.arange(B), offset + lengths] = self.eos
        total = lengths + offset + int(eos)
        scores = ngram_backend.query(self.tables, self._index, self.bits, self.unk_log_prob, internal, total, offset)
        return scores[:, :T + int(eos)]

    def logprob(self, tokens: Ids | Sequence[Ids], bos: bool = True,
                eos: bool = False) -> torch.Tensor | list[torch.Tensor]:
        """Natural-log probability of each token given its history (float64), batched.

        tokens: 1-D (T,) or 2-D (B, T) integer tensor/array, or a list of 1-D sequences; each row is its
        own sequence. bos=True: the history starts with <s>; bos=False: the first token has an empty
        history. eos=True adds one column, the probability of </s> after the row. A list in gives a
        list of 1-D tensors out; otherwise the shape of `tokens` (plus the eos column).
        """
        if isinstance(tokens, (list, tuple)) and tokens and not isinstance(tokens[0], (int, np.integer)):
            seqs = [torch.as_tensor(_as_ids(t, "each sequence of tokens")) for t in tokens]
            lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
            rows = torch.zeros(len(seqs), int(lengths.max()) if len(seqs) else 0, dtype=torch.int64)
            for i, s in enumerate(seqs):
                rows[i, :len(s)] = s
            scores = self._score_rows(rows, lengths, bos, eos)
            return [scores[i, :int(n) + int(eos)] for i, n in enumerate(lengths)]
        x = tokens if isinstance(tokens, torch.Tensor) else torch.as_tensor(np.asarray(tokens))
        if x.dim() not in (1, 2):
            raise ValueError(f"tokens must be 1-D or 2-D, got shape {tuple(x.shape)}")
        if x.numel() and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
            raise ValueError(f"tokens must be integer ids, got dtype {x.dtype}")
        rows = x.reshape(-1, x.shape[-1]) if x.dim() == 2 else x.reshape(1, -1)
        lengths = torch.full((rows.shape[0],), rows.shape[1], dtype=torch.int64)
        scores = self._score_rows(rows.cpu(), lengths, bos, eos)
        return scores if x.dim() == 2 else scores[0]

    def perplexity(self, tokens: Ids | Sequence[Ids], bos: bool = True, eos: bool = True) -> float:
        """exp(-mean log p) over every predicted token (and each row's </s> when eos=True)."""
        scores = self.logprob(tokens, bos=bos, eos=eos)
        flat = torch.cat([s.reshape(-1) for s in scores]) if isinstance(scores, list) else scores.reshape(-1)
        if flat.numel() == 0:
            raise ValueError("perplexity of an empty sequence")
        return float(torch.exp(-flat.mean()))

    def next_token_logprobs(self, history: Ids, bos: bool = True, include_unk: bool = False) -> torch.Tensor:
        """log p(w | history) for w = 0..V-1 and, at index V, </s> -> float64 (V + 1,).

        Ids the model does not know get -inf here (they are not outcomes of their own: logprob scores
        them as <unk>). The V + 1 values sum to 1 - p(<unk> | history); include_unk=True appends
        p(<unk> | history) at index V + 1, and then the vector sums to 1.
        """
        hist = torch.as_tensor(_as_ids(history, "history"))
        context = self._internal(hist)[max(0, len(hist) - (self.order - 1)):]
        candidates = torch.arange(self.vocab_size + 2, dtype=torch.int64)
        candidates[self.vocab_size + 1] = self.unk
        prefix = torch.cat([torch.tensor([self.bos]), context]) if bos and len(context) < self.order - 1 else context
        rows = torch.cat([prefix.expand(len(candidates), -1), candidates[:, None]], dim=1)
        lengths = torch.full((len(candidates),), rows.shape[1], dtype=torch.int64)
        scores = ngram_backend.query(self.tables, self._index, self.bits, self.unk_log_prob, rows, lengths,
                                     rows.shape[1] - 1)[:, 0]
        scores[:self.vocab_size][~self._known[:self.vocab_size]] = -math.inf
        return scores if include_unk else scores[:self.vocab_size + 1]

    def generate(self, prompt: Ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, top_p: float | None = None) -> torch.Tensor:
        """Sample up to max_new_tokens ids after `prompt` (history starts with <s>); stops at </s>.

        Returns prompt + new ids (1-D int64). temperature 0 = greedy; top_k keeps the k likeliest,
        top_p the smallest set holding that much probability.
        """
        check_sampling(max_new_tokens, temperature, top_k, top_p)
        out = [int(t) for t in _as_ids(prompt, "prompt")]
        for _ in range(max_new_tokens):
            scores = self.next_token_logprobs(torch.tensor(out, dtype=torch.int64))
            choice = int(sample_next_token(scores[None], temperature, top_k, top_p, generator)[0])
            if choice == self.vocab_size:  # </s>
                break
            out.append(choice)
        return torch.tensor(out, dtype=torch.int64)

    # ----------------------------------------------------------------------------------------- ARPA
    def to_arpa(self, path: str | Path) -> None:
        """Write the model as an ARPA file (log10; words = decimal ids, or `words`, plus <s>, </s>, <unk>).

        Written to a temporary file next to `path`, then renamed into place.
        """
        ngram_arpa.write(self, Path(path))

    @classmethod
    def from_arpa(cls, path: str | Path) -> NGramLM:
        """Read an ARPA file (fastlm's, KenLM's, SRILM's...). Malformed input -> ValueError naming the line.

        When the words are decimal ids the ids are kept; otherwise the model gets `words` (index = id,
        in the unigram section's order, <s> </s> <unk> excluded) and `word_ids` maps strings to ids.
        """
        return ngram_arpa.read(cls, Path(path))

    def word_ids(self, words: Sequence[str]) -> list[int]:
        """Ids of word strings (`words` of an ARPA model, else decimal ids); -1 (-> <unk>) when unknown."""
        if self.words is not None:
            index = {w: i for i, w in enumerate(self.words)}
            return [index.get(w, -1) for w in words]
        return [int(w) if w.isdigit() and int(w) < self.vocab_size else -1 for w in words]

    def __repr__(self) -> str:
        sizes = ", ".join(str(t[0].shape[0]) for t in self.tables)
        return (f"NGramLM(order={self.order}, vocab_size={self.vocab_size}, smoothing={self.smoothing!r}, "
                f"ngrams=[{sizes}])")


def _discount_list(discount, smoothing: str, order: int) -> list[float]:
    """Fixed discounts as the native op takes them: 3 per order, or [] to estimate them."""
    if discount is None:
        return []
    if smoothing == "kneser_ney":
        values = [discount] * order if np.isscalar(discount) else list(discount)
        if len(values) != order or not all(isinstance(d, (int, float)) and 0 <= d <= 1 for d in values):
            raise ValueError(f"kneser_ney discount must be a number in [0, 1] or one per order ({order}), "
                             f"got {discount!r}")
        return [float(d) for d in values for _ in range(3)]
    if smoothing == "modified_kneser_ney":
        triples = list(discount)
        if len(triples) == 3 and all(np.isscalar(d) for d in triples):
            triples = [triples] * order
        if len(triples) != order or not all(len(t) == 3 and all(0 < float(t[i]) <= i + 1 for i in range(3))
                                             for t in triples):
            raise ValueError("modified_kneser_ney discount must be (D1, D2, D3+) or one such triple per order "
                             f"({order}), with 0 < Dk <= k; got {discount!r}")
        return [float(d) for t in triples for d in t]
    raise ValueError(f"discount applies to kneser_ney and modified_kneser_ney, not {smoothing!r}")


def _prune_list(prune, order: int) -> list[int]:
    if prune is None:
        return []
    values = [int(p) for p in prune]
    if not values or values[0] != 0 or any(p < 0 for p in values) or any(b < a for a, b in itertools.pairwise(values)):
        raise ValueError(f"prune must be non-negative, non-decreasing per-order thresholds starting with 0 "
                         f"(unigrams are never pruned), got {prune!r}")
    return (values + [values[-1]] * order)[:order]
