"""Sentences of words and their vocabulary: what every embedding trainer starts from.

    sentences = word_sentences(text)                 # regex words, lowercased, one sentence per line
    vocab = build_vocab(sentences, min_count=5)      # most frequent first
    tokens, starts = vocab.encode(sentences)         # int32 ids back to back, int64 sentence offsets

Words outside the vocabulary are dropped from their sentence (as word2vec.c and gensim do), so
the window spans over them.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

# A word: letters/digits with inner apostrophes ("don't"); underscores split identifiers
# (snake_case code reads as its words).
WORD_PATTERN = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize_words(text: str, lowercase: bool = True) -> list[str]:
    """The regex words of `text` (WORD_PATTERN), lowercased unless lowercase=False."""
    return WORD_PATTERN.findall(text.lower() if lowercase else text)


def word_sentences(corpus: str | Iterable[str] | Iterable[Sequence[str]], lowercase: bool = True) -> list[list[str]]:
    """Sentences as lists of words from: a text (one sentence per line), an iterable of texts (each
    line of each a sentence), or already tokenized sentences (lists of strings, kept as they are).
    Empty sentences are dropped."""
    if isinstance(corpus, str):
        corpus = [corpus]
    out: list[list[str]] = []
    for item in corpus:
        if isinstance(item, str):
            for line in item.splitlines():
                words = tokenize_words(line, lowercase)
                if words:
                    out.append(words)
        elif isinstance(item, (list, tuple)):
            if not all(isinstance(w, str) for w in item):
                raise ValueError("a tokenized sentence must be a list of strings")
            if item:
                out.append(list(item))
        else:
            raise ValueError(  # noqa: TRY004 - bad input is a ValueError (the CLI reports it in one line)
                f"a corpus item must be a text or a list of words, got {type(item).__name__}")
    return out


@dataclass
class Vocabulary:
    """Words sorted by count (most frequent first, ties by word) and their corpus counts."""

    words: list[str]
    counts: np.ndarray  # int64, counts[i] of words[i]

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, sentences: Iterable[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """(tokens int32, sentence_starts int64 of len(sentences kept) + 1); words not in the
        vocabulary are dropped, and sentences left empty too."""
        index = self.index
        ids: list[int] = []
        starts = [0]
        for sentence in sentences:
            before = len(ids)
            ids.extend(i for i in (index.get(w) for w in sentence) if i is not None)
            if len(ids) > before:
                starts.append(len(ids))
        return np.asarray(ids, dtype=np.int32), np.asarray(starts, dtype=np.int64)


def build_vocab(sentences: Iterable[Sequence[str]], min_count: int = 5, max_size: int | None = None) -> Vocabulary:
    """The words seen at least `min_count` times (at most `max_size`, most frequent kept).

    ValueError when the corpus is empty or no word reaches min_count."""
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    counter: Counter[str] = Counter()
    for sentence in sentences:
        counter.update(sentence)
    if not counter:
        raise ValueError("the corpus has no words")
    kept = sorted(((w, c) for w, c in counter.items() if c >= min_count), key=lambda wc: (-wc[1], wc[0]))
    if max_size is not None:
        kept = kept[:max_size]
    if not kept:
        raise ValueError(f"no word occurs min_count = {min_count} times (the most frequent, "
                         f"{counter.most_common(1)[0][0]!r}, occurs {counter.most_common(1)[0][1]} times)")
    return Vocabulary([w for w, _ in kept], np.asarray([c for _, c in kept], dtype=np.int64))


def bpe_sentences(corpus: str | Iterable[str], tokenizer) -> list[list[str]]:
    """Sentences (lines) as the token strings of a `tokenizers.Tokenizer` (e.g. fastlm's byte-level
    BPE, whose tokens mark a leading space with "Ġ")."""
    if isinstance(corpus, str):
        corpus = [corpus]
    lines = [line for text in corpus for line in _text_of(text).splitlines() if line.strip()]
    return [e.tokens for e in tokenizer.encode_batch(lines, add_special_tokens=False) if e.tokens]


def _text_of(item) -> str:
    if not isinstance(item, str):
        raise ValueError(f"tokens = 'bpe' needs texts, got {type(item).__name__}")  # noqa: TRY004 - as above
    return item
