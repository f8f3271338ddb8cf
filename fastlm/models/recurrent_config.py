"""RecurrentConfig: the architecture of the recurrent language models (model.family = rnn | lstm | gru)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from fastlm.models.config import DictConfig, _is_float, _is_int

RECURRENT_FAMILIES = ("rnn", "lstm", "gru")


@dataclass
class RecurrentConfig(DictConfig):
    """embedding (d_model) -> n_layer recurrent layers of width d_model (dropout between them and
    around the stack) -> head over the vocabulary (tied to the embedding by default).

    rnn is the Elman RNN with tanh. max_seq_len only bounds the training windows and prompts (a
    recurrent model has no positional table); generation may run past it.
    """

    family: str = "lstm"
    vocab_size: int = 50257
    n_layer: int = 2
    d_model: int = 256
    max_seq_len: int = 1024
    dropout: float = 0.0
    tie_embeddings: bool = True
    # Embeddings (and a tied head) uniform(-init_range, init_range). Large on purpose: the recurrent
    # output is bounded by 1, so tied logits need embedding norms of several units to reach the spread
    # of a unigram distribution (0.1 leaves training on a unigram plateau for hundreds of steps).
    init_range: float = 1.0

    def resolved(self) -> "RecurrentConfig":
        """A validated copy (nothing is left to a family default)."""
        self.validate()
        return dataclasses.replace(self)

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and what was expected."""
        def bad(name: str, expected: str):
            raise ValueError(f"model.{name} = {getattr(self, name)!r}: expected {expected}")

        if self.family not in RECURRENT_FAMILIES:
            bad("family", " or ".join(repr(f) for f in RECURRENT_FAMILIES))
        for name in ("vocab_size", "n_layer", "d_model", "max_seq_len"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                bad(name, "a positive integer")
        if not _is_float(self.dropout) or not 0 <= self.dropout < 1:
            bad("dropout", "a number in [0, 1)")
        if not isinstance(self.tie_embeddings, bool):
            bad("tie_embeddings", "true or false")
        if not _is_float(self.init_range) or not self.init_range > 0:
            bad("init_range", "a positive number")
