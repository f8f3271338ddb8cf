"""EncoderConfig: the architecture of a BERT / RoBERTa / ALBERT style bidirectional encoder.

Field names follow GPTConfig where they mean the same thing. These are the [model] keys of the
encoder families in a training config (fastlm.train.model_section).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from fastlm.models.config import ENCODER_FAMILIES, DictConfig
from fastlm.nn.activations import ACTIVATIONS

# Family defaults for the fields left as None (those of the original papers / HF configs).
_DEFAULTS = {
    "bert": dict(type_vocab_size=2, pad_token_id=0, norm_eps=1e-12, activation="gelu"),
    "roberta": dict(type_vocab_size=1, pad_token_id=1, norm_eps=1e-5, activation="gelu"),
    "albert": dict(type_vocab_size=2, pad_token_id=0, norm_eps=1e-12, activation="gelu_new"),
}


@dataclass
class EncoderConfig(DictConfig):
    """Fields left as None take the family default; `resolved()` fills them in.

    bert:    absolute learned positions, token types (2), post-LayerNorm blocks, GELU, tied MLM decoder.
    roberta: BERT with one token type and positions offset by pad_token_id + 1 (pads get pad_token_id).
    albert:  factorized embedding (embedding_size E, projected to d_model) and cross-layer sharing:
             n_layer layers run n_layer_groups distinct blocks (default 1: all layers share one).
    max_seq_len is the longest input (RoBERTa's position table has pad_token_id + 1 more rows).
    """

    KIND = "encoder"

    family: str = "bert"
    vocab_size: int = 30522
    n_layer: int = 12
    n_head: int = 12
    d_model: int = 768
    d_ff: int | None = None              # 4 * d_model
    max_seq_len: int = 512
    embedding_size: int | None = None    # d_model (albert: 128)
    type_vocab_size: int | None = None
    pad_token_id: int | None = None
    n_layer_groups: int | None = None    # distinct blocks (albert: 1; bert/roberta: n_layer)
    norm_eps: float | None = None
    activation: str | None = None
    dropout: float = 0.0
    init_std: float = 0.02
    tie_embeddings: bool | None = None   # the MLM decoder shares the token embedding (default true)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def position_offset(self) -> int:
        """Rows of the position table before position 0 (RoBERTa: pad_token_id + 1)."""
        return self.pad_token_id + 1 if self.family == "roberta" else 0

    def resolved(self) -> "EncoderConfig":
        self.validate()
        defaults = _DEFAULTS[self.family]
        albert = self.family == "albert"

        def pick(name, default):
            v = getattr(self, name)
            return default if v is None else v

        return dataclasses.replace(
            self,
            d_ff=pick("d_ff", 4 * self.d_model),
            embedding_size=pick("embedding_size", 128 if albert else self.d_model),
            type_vocab_size=pick("type_vocab_size", defaults["type_vocab_size"]),
            pad_token_id=pick("pad_token_id", defaults["pad_token_id"]),
            n_layer_groups=pick("n_layer_groups", 1 if albert else self.n_layer),
            norm_eps=pick("norm_eps", defaults["norm_eps"]),
            activation=pick("activation", defaults["activation"]),
            tie_embeddings=pick("tie_embeddings", True),
        )

    def validate(self) -> None:
        """Raise ValueError naming the field, its value and what was expected."""
        def bad(name: str, expected: str):
            raise ValueError(f"model.{name} = {getattr(self, name)!r}: expected {expected}")

        if self.family not in ENCODER_FAMILIES:
            bad("family", " or ".join(repr(f) for f in ENCODER_FAMILIES))
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                bad(name, "a positive integer")
        for name in ("d_ff", "embedding_size", "type_vocab_size", "n_layer_groups"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                bad(name, "a positive integer (or unset for the family default)")
        if self.pad_token_id is not None and (not _is_int(self.pad_token_id) or not 0 <= self.pad_token_id < self.vocab_size):
            bad("pad_token_id", f"a token id in [0, vocab_size = {self.vocab_size})")
        if self.d_model % self.n_head:
            bad("n_head", f"a divisor of d_model ({self.d_model})")
        if self.n_layer_groups is not None and self.n_layer_groups > self.n_layer:
            bad("n_layer_groups", f"at most n_layer ({self.n_layer})")
        for name in ("norm_eps",):
            v = getattr(self, name)
            if v is not None and (not _is_float(v) or not v > 0):
                bad(name, "a positive number")
        if not _is_float(self.init_std) or not self.init_std > 0:
            bad("init_std", "a positive number")
        if not _is_float(self.dropout) or not 0 <= self.dropout < 1:
            bad("dropout", "a number in [0, 1)")
        if self.tie_embeddings is not None and not isinstance(self.tie_embeddings, bool):
            bad("tie_embeddings", "true or false")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            bad("activation", f"one of {sorted(ACTIVATIONS)}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
