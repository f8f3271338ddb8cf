"""`fastlm embeddings train`: a config -> a run directory of word vectors.

    RUN/vectors.txt | vectors.bin    word2vec.c's text or binary format (embeddings.format)
    RUN/vectors.safetensors          the same vectors, the word list in the metadata
    RUN/config.toml                  the config as resolved
    RUN/metrics.json                 words/s, seconds, vocabulary size, corpus words, ...

`neighbors`/`analogy` read RUN (its vectors.safetensors) or a vectors file directly.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from fastlm.embeddings.config import EmbeddingsConfig
from fastlm.embeddings.glove import train_glove
from fastlm.embeddings.vectors import WordVectors
from fastlm.embeddings.word2vec import train_word2vec

VECTOR_FILES = {"text": "vectors.txt", "binary": "vectors.bin"}


def train_embeddings_run(config: EmbeddingsConfig, out_dir: str | os.PathLike | None = None,
                         show_progress: bool = True) -> dict:
    """Train the config's vectors and write the run directory; returns {"run_dir", "metrics"}."""
    from fastlm.data.sources import resolve_source

    e, d = config.embeddings, config.data
    run_dir = Path(out_dir) if out_dir is not None else Path("runs") / config.name
    src = resolve_source(d.source, text_field=d.text_field, builtin_modules=d.builtin_modules)
    texts = list(src.documents())
    if not texts:
        raise ValueError(f"data source {d.source!r} has no text")
    tokenizer = _bpe_tokenizer(config, show_progress) if e.tokens == "bpe" else None
    common = {"dim": e.dim, "window": e.window, "min_count": e.min_count, "epochs": e.epochs, "seed": e.seed,
              "threads": e.threads or None, "tokens": e.tokens, "lowercase": e.lowercase, "tokenizer": tokenizer,
              "max_vocab": e.max_vocab or None}
    _say(show_progress, f"fastlm: training {e.method} vectors (dim {e.dim}) on {src.name!r}")
    if e.method == "glove":
        wv = train_glove(texts, x_max=e.x_max, alpha=e.weight_power, lr=e.lr, **common)
    else:
        wv = train_word2vec(texts, method=e.method, negative=e.negative, sample=e.sample, alpha=e.alpha,
                            min_alpha=e.min_alpha, **common)
    run_dir.mkdir(parents=True, exist_ok=True)
    wv.save_word2vec(run_dir / VECTOR_FILES[e.format], binary=e.format == "binary")
    wv.save(run_dir / "vectors.safetensors")
    (run_dir / "config.toml").write_text(config.to_toml())
    metrics = {k: v for k, v in wv.meta.items() if k != "costs"}
    if "costs" in wv.meta:
        metrics["final_cost"] = wv.meta["costs"][-1]
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    _say(show_progress, f"fastlm: {metrics['vocab_size']} words, {metrics['corpus_words']} corpus words x "
                        f"{e.epochs} epochs in {metrics['seconds']:.2f} s ({metrics['words_per_s']:,.0f} words/s)")
    return {"run_dir": str(run_dir), "metrics": metrics}


def load_run_vectors(run: str | os.PathLike) -> WordVectors:
    """The vectors of a run directory, or of a vectors file (safetensors, word2vec text/binary)."""
    path = Path(run)
    if path.is_dir():
        for name in ("vectors.safetensors", *VECTOR_FILES.values()):
            if (path / name).is_file():
                return WordVectors.load(path / name)
        raise FileNotFoundError(f"{path} is not an embeddings run directory (no vectors.safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"no such run directory or vectors file: {str(path)!r}")
    return WordVectors.load(path)


def _bpe_tokenizer(config: EmbeddingsConfig, show_progress: bool):
    d = config.data
    if d.tokenizer:
        return d.tokenizer
    from fastlm.data.prepare import prepare_corpus

    corpus = prepare_corpus(d.source, vocab_size=d.vocab_size, text_field=d.text_field,
                            builtin_modules=d.builtin_modules, show_progress=show_progress)
    return corpus.tokenizer()


def _say(show: bool, message: str) -> None:
    if show:
        print(message, flush=True)
