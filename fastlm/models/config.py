"""GPTConfig: the architecture of GPT-2 and LLaMA style models (the [model] keys of those families)."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from fastlm.nn.activations import ACTIVATIONS

FAMILIES = ("gpt2", "llama")
ENCODER_FAMILIES = ("bert", "roberta", "albert")  # fastlm.models.Encoder (EncoderConfig)


class DictConfig:
    """from_dict / to_dict of a model config dataclass; KIND names it in errors."""

    KIND = "model"

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown {cls.KIND} config key(s): {', '.join(unknown)}; "
                             f"expected some of: {', '.join(names)}")
        cfg = cls(**d)
        cfg.validate()
        return cfg

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class GPTConfig(DictConfig):
    """Fields left as None take the family's default; `resolved()` fills them in.

    gpt2:  learned positions, LayerNorm, GELU (tanh, "gelu_new") MLP of 4*d_model, biases, tied embeddings.
    llama: RoPE, RMSNorm, gated SiLU MLP (SwiGLU) of ~8/3*d_model rounded up to a multiple of 256,
           no biases, untied embeddings, grouped-query attention when n_kv_head < n_head.
    """

    family: str = "gpt2"
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_kv_head: int | None = None
    d_model: int = 768
    d_ff: int | None = None
    head_dim: int | None = None
    max_seq_len: int = 1024
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    activation: str | None = None
    bias: bool | None = None
    tie_embeddings: bool | None = None
    dropout: float = 0.0
    init_std: float = 0.02

    # ---- construction (from_dict / to_dict: DictConfig) ----------------------------------------
    def resolved(self) -> "GPTConfig":
        """A copy with every None replaced by the family default (so it can be written to TOML)."""
        self.validate()
        gpt2 = self.family == "gpt2"
        head_dim = self.head_dim or self.d_model // self.n_head
        if self.d_ff is not None:
            d_ff = self.d_ff
        elif gpt2:
            d_ff = 4 * self.d_model
        else:  # LLaMA: 2/3 of 4*d_model (the gate makes up the difference), rounded up to 256
            d_ff = 256 * math.ceil(int(8 * self.d_model / 3) / 256)
        return dataclasses.replace(
            self,
            n_kv_head=self.n_kv_head or self.n_head,
            d_ff=d_ff,
            head_dim=head_dim,
            activation=self.activation or ("gelu_new" if gpt2 else "silu"),
            bias=gpt2 if self.bias is None else self.bias,
            tie_embeddings=gpt2 if self.tie_embeddings is None else self.tie_embeddings,
        )

    # ---- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the field, its value and what was expected."""
        def bad(name: str, expected: str):
            raise ValueError(f"model.{name} = {getattr(self, name)!r}: expected {expected}")

        if self.family not in FAMILIES:
            bad("family", " or ".join(repr(f) for f in FAMILIES))
        for name in ("vocab_size", "n_layer", "n_head", "d_model", "max_seq_len"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                bad(name, "a positive integer")
        for name in ("n_kv_head", "d_ff", "head_dim"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or v < 1):
                bad(name, "a positive integer (or unset for the family default)")
        for name in ("norm_eps", "rope_theta", "init_std"):
            v = getattr(self, name)
            if not _is_float(v) or not v > 0:
                bad(name, "a positive number")
        if not _is_float(self.dropout) or not 0 <= self.dropout < 1:
            bad("dropout", "a number in [0, 1)")
        for name in ("bias", "tie_embeddings"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, bool):
                bad(name, "true or false")
        if self.activation is not None and self.activation not in ACTIVATIONS:
            bad("activation", f"one of {sorted(ACTIVATIONS)}")
        if self.n_kv_head is not None and self.n_head % self.n_kv_head:
            bad("n_kv_head", f"a divisor of n_head ({self.n_head})")
        if self.head_dim is None and self.d_model % self.n_head:
            bad("n_head", f"a divisor of d_model ({self.d_model}), or set head_dim")
        head_dim = self.head_dim or self.d_model // self.n_head
        if self.family == "llama" and head_dim % 2:
            bad("head_dim" if self.head_dim else "n_head", f"an even head_dim for RoPE (got head_dim {head_dim})")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_float(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
