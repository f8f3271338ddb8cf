"""From the caller's corpus to training arrays: sentences -> vocabulary -> (ids, sentence offsets)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastlm.embeddings.vocab import Vocabulary, bpe_sentences, build_vocab, word_sentences

TOKEN_KINDS = ("words", "bpe")


@dataclass
class EncodedCorpus:
    vocab: Vocabulary
    tokens: np.ndarray   # int32 ids, sentences back to back
    starts: np.ndarray   # int64 offsets, len(sentences) + 1


def encode_corpus(corpus, *, tokens: str = "words", min_count: int = 5, lowercase: bool = True,
                  tokenizer=None, max_vocab: int | None = None) -> EncodedCorpus:
    """corpus: a text, an iterable of texts (each line a sentence) or of tokenized sentences.
    tokens="bpe" splits texts with `tokenizer` (a tokenizers.Tokenizer or a tokenizer.json path)."""
    if tokens not in TOKEN_KINDS:
        raise ValueError(f"tokens must be one of {', '.join(TOKEN_KINDS)}, got {tokens!r}")
    if tokens == "bpe":
        if tokenizer is None:
            raise ValueError("tokens = 'bpe' needs a tokenizer (a tokenizers.Tokenizer or a tokenizer.json path)")
        if isinstance(tokenizer, (str, os.PathLike)):
            from fastlm.data.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(Path(tokenizer))
        sentences = bpe_sentences(corpus, tokenizer)
    else:
        sentences = word_sentences(corpus, lowercase)
    vocab = build_vocab(sentences, min_count=min_count, max_size=max_vocab)
    ids, starts = vocab.encode(sentences)
    return EncodedCorpus(vocab, ids, starts)


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_positive(**values) -> None:
    """ValueError naming the first argument that is not > 0."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
