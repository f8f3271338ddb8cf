"""The config of an embeddings run: [embeddings] (method and hyperparameters) and [data].

    config = load_embeddings_config("word2vec", ["embeddings.dim=50", "data.source=corpus.txt"])

[data] keys mean what they mean for `fastlm train` (fastlm.train.config.DataSection): `source` is
"builtin", a file, a directory or a glob; `vocab_size`/`tokenizer` only matter for tokens = "bpe".
Types are checked by the trainer's own config reader, so errors read the same.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from fastlm.train.config import _build_section, parse_value
from fastlm.train.errors import ConfigError
from fastlm.train.toml_text import dumps_toml

METHODS = ("skipgram", "cbow", "glove")
FORMATS = ("text", "binary")


@dataclass
class EmbeddingsSection:
    method: str = "skipgram"        # skipgram | cbow (word2vec, negative sampling) | glove
    dim: int = 100
    window: int = 5                 # word2vec: the largest window; glove: the counting window
    min_count: int = 5              # words seen fewer times are dropped
    max_vocab: int = 0              # keep at most this many words (0: no limit)
    tokens: str = "words"           # words (regex words) | bpe (the [data] tokenizer's tokens)
    lowercase: bool = True          # words: lowercase before counting
    epochs: int = 5
    threads: int = 0                # 0: every CPU this process may use
    seed: int = 0
    # word2vec
    negative: int = 5               # noise words per positive pair
    sample: float = 1e-3            # subsampling threshold of frequent words (0: off)
    alpha: float | None = None      # starting learning rate (default: 0.025 skipgram, 0.05 cbow)
    min_alpha: float = 1e-4         # the rate at the end of the linear decay
    # glove
    x_max: float = 100.0            # counts above this get full weight
    weight_power: float = 0.75      # the weighting exponent (GloVe's alpha)
    lr: float = 0.05                # AdaGrad's initial learning rate
    # output
    format: str = "text"            # vectors.txt (text) or vectors.bin (binary), plus vectors.safetensors


@dataclass
class EmbeddingsDataSection:
    source: str = "builtin"
    text_field: str = "text"
    builtin_modules: list[str] | None = None
    vocab_size: int = 4096          # tokens = "bpe": the BPE trained on the source (fastlm.data.prepare_corpus)
    tokenizer: str | None = None    # tokens = "bpe": an existing tokenizer.json instead


@dataclass
class EmbeddingsConfig:
    embeddings: EmbeddingsSection = field(default_factory=EmbeddingsSection)
    data: EmbeddingsDataSection = field(default_factory=EmbeddingsDataSection)
    name: str = "embeddings"

    def to_toml(self) -> str:
        return dumps_toml({s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS})


SECTIONS: dict[str, type] = {"embeddings": EmbeddingsSection, "data": EmbeddingsDataSection}


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("fastlm.embeddings.configs").iterdir()
                  if p.name.endswith(".toml"))


def load_embeddings_config(path_or_preset: str | os.PathLike, overrides: typing.Iterable[str] = ()) -> EmbeddingsConfig:
    """Read a TOML file or a preset, apply `section.key=value` overrides, check the values."""
    spec = str(path_or_preset)
    path = Path(spec)
    if path.is_file():
        text, name = path.read_text(encoding="utf-8"), path.stem
    elif spec in preset_names():
        text, name = resources.files("fastlm.embeddings.configs").joinpath(f"{spec}.toml").read_text("utf-8"), spec
    else:
        raise ConfigError(f"config {spec!r} is neither a TOML file nor an embeddings preset "
                          f"(presets: {', '.join(preset_names())})")
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{spec}: invalid TOML: {e}") from None
    for item in overrides:
        _apply_override(raw, item)
    return config_from_dict(raw, name)


def config_from_dict(raw: dict[str, Any], name: str = "embeddings") -> EmbeddingsConfig:
    unknown = [s for s in raw if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown section [{unknown[0]}] (expected: {', '.join(SECTIONS)})")
    sections = {s: _build_section(s, cls, raw.get(s, {})) for s, cls in SECTIONS.items()}
    config = EmbeddingsConfig(name=name, **sections)
    _validate(config.embeddings)
    return config


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, value = item.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name or section not in SECTIONS:
        raise ConfigError(f"--set {item!r}: expected section.key=value with section one of "
                          f"{', '.join(SECTIONS)}, e.g. embeddings.dim=50")
    raw.setdefault(section, {})[name] = parse_value(value.strip())


def _validate(e: EmbeddingsSection) -> None:
    def need(ok: bool, key: str, value: Any, expected: str) -> None:
        if not ok:
            raise ConfigError(f"embeddings.{key} = {value!r}: expected {expected}")

    need(e.method in METHODS, "method", e.method, " or ".join(METHODS))
    need(e.tokens in ("words", "bpe"), "tokens", e.tokens, "words or bpe")
    need(e.format in FORMATS, "format", e.format, " or ".join(FORMATS))
    for key in ("dim", "window", "epochs", "min_count", "negative"):
        need(getattr(e, key) >= 1, key, getattr(e, key), "an integer >= 1")
    for key in ("threads", "max_vocab", "seed"):
        need(getattr(e, key) >= 0, key, getattr(e, key), "an integer >= 0")
    for key in ("x_max", "weight_power", "lr"):
        need(getattr(e, key) > 0, key, getattr(e, key), "a number > 0")
    need(e.sample >= 0, "sample", e.sample, "a number >= 0")
    need(e.alpha is None or e.alpha > 0, "alpha", e.alpha, "a number > 0")
    need(e.min_alpha >= 0, "min_alpha", e.min_alpha, "a number >= 0")
