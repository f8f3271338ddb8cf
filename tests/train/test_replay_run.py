"""train.replay in fastlm train (model.init_from): the original run's training stream, found from its
config.toml, is mixed into the new data's batches."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fastlm.train import Trainer
from fastlm.train.config import load_config
from fastlm.train.data import run_corpus
from fastlm.train.errors import ConfigError
from fastlm.train.metrics import read_metrics
from fastlm.train.replay import replay_tokens
from tests.train.train_helpers import micro_config


@pytest.fixture
def new_domain(tmp_path):
    path = tmp_path / "new.jsonl"
    words = "help on module os functions classes data file path name return value".split()
    rng = np.random.default_rng(0)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 60))}) + "\n" for _ in range(60)))
    return path


def _config(base, source, *extra):
    return micro_config(f"model.init_from={json.dumps(str(base))}", f"data.source={json.dumps(str(source))}",
                        "train.steps=3", "train.eval_every=0", "checkpoint.every=0", *extra)


def test_replay_reads_the_original_stream_and_changes_the_batches(finished_run, new_domain, tmp_path):
    base, _ = finished_run
    config = _config(base, new_domain, "train.replay=0.5")
    corpus = run_corpus(config, base / "tokenizer.json")
    original = run_corpus(load_config(base / "config.toml"), base / "tokenizer.json")
    assert np.array_equal(np.asarray(replay_tokens(config, corpus)), np.asarray(original.train_tokens))
    runs = {}
    for replay in ("0.0", "0.5"):
        out = tmp_path / f"r{replay}"
        Trainer(_config(base, new_domain, f"train.replay={replay}"), out_dir=out, show_progress=False).fit()
        runs[replay] = [r["loss"] for r in read_metrics(out) if "loss" in r]
        assert f"replay = {replay}" in (out / "config.toml").read_text()
    assert runs["0.0"][0] != runs["0.5"][0]  # half of the first batch is other text


def test_replay_needs_a_fastlm_init_from(finished_run, new_domain, tmp_path):
    with pytest.raises(ConfigError, match="train.replay = 0.1: needs model.init_from"):
        micro_config("train.replay=0.1")
    with pytest.raises(ConfigError, match="0 <= replay < 1"):
        micro_config("train.replay=1.0")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ConfigError, match="not a fastlm run directory"):
        replay_tokens(micro_config(f"model.init_from={json.dumps(str(other))}", "train.replay=0.1"), None)
