"""`model.init_embeddings`: start a model's token embeddings from trained word vectors.

    rows, size = init_token_embeddings(model_embedding, tokenizer, "runs/word2vec/vectors.safetensors")

Each tokenizer token is looked up by its string, then with a byte-level BPE's leading-space mark
("Ġ", or SentencePiece's "▁") stripped, then lowercased; the first hit's vector is copied into the
token's row. Copied vectors are rescaled to the embedding's current standard deviation (its
initialisation), so the residual stream starts at the scale the model was built for; rows
without a match keep their initialisation.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from fastlm.embeddings.vectors import WordVectors

SPACE_MARKS = ("Ġ", "▁")


def candidate_strings(token: str) -> list[str]:
    """The strings a token may appear as in a word list, best first."""
    out = [token]
    for mark in SPACE_MARKS:
        if token.startswith(mark) and len(token) > len(mark):
            out.append(token[len(mark):])
    out += [s.lower() for s in out]
    return list(dict.fromkeys(out))


def init_token_embeddings(embedding: nn.Embedding, tokenizer, vectors: WordVectors | str | os.PathLike,
                          where: str = "model.init_embeddings") -> tuple[int, int]:
    """Copy matching word vectors into `embedding`'s rows; returns (rows initialised, rows).

    tokenizer: a tokenizers.Tokenizer (its get_vocab()). ValueError when the vectors' width is not
    the embedding's (the message names both)."""
    from fastlm.train.errors import ConfigError

    wv = vectors if isinstance(vectors, WordVectors) else _load(vectors, where)
    rows, width = embedding.weight.shape
    if wv.dim != width:
        raise ConfigError(f"{where}: the vectors have dim {wv.dim} but the model's token embedding has width "
                          f"{width} (train the vectors with embeddings.dim = {width})")
    ids, sources = [], []
    for token, token_id in tokenizer.get_vocab().items():
        if token_id >= rows:
            continue
        row = next((wv.index[s] for s in candidate_strings(token) if s in wv.index), None)
        if row is not None:
            ids.append(token_id)
            sources.append(row)
    if ids:
        with torch.no_grad():
            weight = embedding.weight
            copied = wv.vectors[sources].to(torch.float32)
            scale = weight.detach().float().std() / copied.std().clamp_min(1e-12)
            weight[torch.tensor(ids, device=weight.device)] = (copied * scale).to(weight.device, weight.dtype)
    return len(ids), rows


def _load(path, where: str) -> WordVectors:
    from fastlm.train.errors import ConfigError

    try:
        return WordVectors.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{where} = {str(path)!r}: file not found") from None
    except ValueError as e:
        raise ConfigError(f"{where} = {str(path)!r}: {e}") from None


def init_model_embeddings(model: nn.Module, tokenizer, path: str | os.PathLike) -> str:
    """init_token_embeddings on the model's token embedding (its first `tok_emb`); returns the line
    that reports the coverage."""
    from fastlm.train.errors import ConfigError

    embedding = next((m.tok_emb for m in model.modules() if isinstance(getattr(m, "tok_emb", None), nn.Embedding)),
                     None)
    if embedding is None:
        raise ConfigError(f"model.init_embeddings: {type(model).__name__} has no token embedding (tok_emb)")
    if tokenizer is None:
        raise ConfigError("model.init_embeddings: this model has no tokenizer to match word vectors against")
    done, rows = init_token_embeddings(embedding, tokenizer, path)
    return (f"fastlm: token embeddings from {path}: {done} of {rows} rows initialised "
            f"({100.0 * done / max(rows, 1):.1f}% coverage)")
