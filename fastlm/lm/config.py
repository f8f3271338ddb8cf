"""The [model] keys of the statistical language models (model.family = "ngram" | "hmm").

They are fitted, not trained by gradient steps: `fastlm train ngram` counts the training tokens
and `fastlm train hmm` runs Baum-Welch; fastlm.train.statistical runs both.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SMOOTHINGS = ("modified_kneser_ney", "kneser_ney", "witten_bell", "add_k")


class _FittedConfig:
    KIND = "model"

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.KIND} config key(s): {', '.join(unknown)}; "
                             f"expected some of: {', '.join(names)}")
        config = cls(**d)
        config.validate()
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class NGramConfig(_FittedConfig):
    """An n-gram model of `order` (histories of order - 1 tokens), smoothed by `smoothing`."""

    family: str = "ngram"
    vocab_size: int = 4096
    order: int = 5
    smoothing: str = "modified_kneser_ney"
    k: float = 1.0                   # add_k: the pseudo-count added to every n-gram
    prune: list[int] | None = None   # per-order count thresholds (KenLM's --prune); None: keep all

    def validate(self) -> None:
        if self.order < 1:
            raise ValueError(f"model.order = {self.order}: expected at least 1")
        if self.vocab_size < 1:
            raise ValueError(f"model.vocab_size = {self.vocab_size}: expected a positive integer")
        if self.smoothing not in SMOOTHINGS:
            raise ValueError(f"model.smoothing = {self.smoothing!r}: expected one of {', '.join(SMOOTHINGS)}")
        if not self.k > 0:
            raise ValueError(f"model.k = {self.k}: expected a positive number")
        if self.prune is not None and (len(self.prune) > self.order or any(p < 0 for p in self.prune)):
            raise ValueError(f"model.prune = {self.prune}: expected at most {self.order} (model.order) "
                             f"counts >= 0")


@dataclass
class HMMConfig(_FittedConfig):
    """A hidden Markov model with categorical emissions, fitted by Baum-Welch on the training
    tokens cut into sequences of `chunk_len`."""

    family: str = "hmm"
    vocab_size: int = 4096
    n_states: int = 64
    iterations: int = 20             # EM iterations at most
    tol: float = 1e-4                # stop when an iteration gains less log-likelihood per token
    chunk_len: int = 1024            # training sequences: the token stream in pieces of this length
    # added to every expected emission count in each M step, so that a token the training split
    # never shows keeps a probability > 0 (no infinite validation perplexity); 0: plain EM
    emission_pseudocount: float = 0.01

    def validate(self) -> None:
        for key in ("vocab_size", "n_states", "iterations", "chunk_len"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key} = {getattr(self, key)}: expected a positive integer")
        if not self.emission_pseudocount >= 0:
            raise ValueError(f"model.emission_pseudocount = {self.emission_pseudocount}: expected a number >= 0")
        if not self.tol >= 0:
            raise ValueError(f"model.tol = {self.tol}: expected a number >= 0")
