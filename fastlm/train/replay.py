"""train.replay (continual adaptation): the original training stream of a model.init_from run, mixed
into every batch of the new data (fastlm.data.replay.ReplayBatchLoader) to limit forgetting.

The original stream is found from the init_from run's config.toml ([data]) and tokenized with its
tokenizer.json, which must be the tokenizer of the new run too (it is, unless data.tokenizer changes it).
"""
from __future__ import annotations

from pathlib import Path

from fastlm.train.errors import ConfigError


def check_replay(config) -> None:
    r = config.train.replay
    if r == 0:
        return
    if not 0 < r < 1:
        raise ConfigError(f"train.replay = {r}: expected a share of each batch, 0 <= replay < 1")
    if not config.model.init_from:
        raise ConfigError(f"train.replay = {r}: needs model.init_from (the run whose training stream is replayed)")
    for key, on in (("data.stateful", config.data.stateful), ("privacy.dp_sgd", config.privacy.dp_sgd),
                    ("model.family", config.model.is_encoder or config.model.is_fitted),
                    ("federated.clients", config.federated.enabled)):
        if on:
            raise ConfigError(f"train.replay = {r} cannot be combined with {key} = {_get(config, key)!r} "
                              f"(replay mixes randomly drawn language-model windows)")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def replay_tokens(config, corpus, show_progress: bool = False):
    """The training tokens of model.init_from's own corpus (None without train.replay)."""
    if not config.train.replay:
        return None
    from fastlm.train.config import load_saved_config
    from fastlm.train.data import run_corpus

    source = Path(config.model.init_from)
    if not (source / "config.toml").is_file() or not (source / "tokenizer.json").is_file():
        raise ConfigError(f"train.replay: model.init_from = {str(source)!r} is not a fastlm run directory "
                          f"(its config.toml and tokenizer.json name the training stream to replay)")
    if (source / "tokenizer.json").read_bytes() != Path(corpus.tokenizer_path).read_bytes():
        raise ConfigError(f"train.replay: this run's tokenizer differs from model.init_from's "
                          f"({source / 'tokenizer.json'}): the replayed tokens would mean other text")
    original = load_saved_config(source / "config.toml")
    return run_corpus(original, source / "tokenizer.json", show_progress).train_tokens
