"""MaxEntConfig: the [model] keys of the hashed maximum-entropy language model (model.family = "maxent")."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fastlm.models.config import DictConfig, _is_float, _is_int
from fastlm.models.ngram_hash import MERSENNE


@dataclass
class MaxEntConfig(DictConfig):
    """An N-gram maximum-entropy model, N = `order`: the next token is scored from its histories of
    1 .. N-1 tokens (one hashed feature each) plus a bias per word (the unigram feature). order = 1 is
    a unigram model (the bias only); order = 3 a trigram model (the last one and two tokens).

    hash_buckets: the size B of the shared weight vector theta; a feature's scores for the V words are
    the window theta[(hash + v) mod B], so B must be at least vocab_size. Collisions grow as the number
    of distinct histories times V approaches B.
    init_std: 0 (the default) starts every weight at zero (the uniform distribution); > 0 draws them
    from N(0, init_std).
    """

    family: str = "maxent"
    vocab_size: int = 50257
    max_seq_len: int = 1024
    order: int = 3
    hash_buckets: int = 2**22
    init_std: float = 0.0

    def resolved(self) -> MaxEntConfig:
        """A checked copy (there are no family defaults to fill in)."""
        self.validate()
        return dataclasses.replace(self)

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and what was expected."""
        def bad(name: str, expected: str):
            raise ValueError(f"model.{name} = {getattr(self, name)!r}: expected {expected}")

        if self.family != "maxent":
            bad("family", '"maxent"')
        for name in ("vocab_size", "max_seq_len", "order", "hash_buckets"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                bad(name, "a positive integer")
        if self.vocab_size >= MERSENNE:
            bad("vocab_size", "less than 2**31 - 1")
        if not self.vocab_size <= self.hash_buckets <= MERSENNE:
            bad("hash_buckets", f"an integer from model.vocab_size ({self.vocab_size}) to 2**31 - 1")
        if not _is_float(self.init_std) or self.init_std < 0:
            bad("init_std", "a number >= 0")
