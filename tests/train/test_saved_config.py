"""A finished run's config.toml is read without the batch split of the launch reading it (init_from under torchrun)."""
from __future__ import annotations

import pytest

from fastlm.train import Trainer
from fastlm.train.config import ConfigError, load_config, load_saved_config
from fastlm.train.run import load_run
from tests.train.train_helpers import micro_config


def test_a_one_process_run_loads_in_a_launch_of_four(tmp_path, monkeypatch):
    run = tmp_path / "run"
    Trainer(micro_config("train.steps=2", "checkpoint.every=0", "train.eval_every=0"), out_dir=run,
            show_progress=False).fit()  # global batch 4 of micro-batches of 2: 2 processes at most
    monkeypatch.setenv("WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="train.global_batch_size = 4"):
        load_config(run / "config.toml")  # a config to train with here: its split does not fit 4 processes
    config = load_saved_config(run / "config.toml")
    assert config.train.global_batch_size == 4
    load_run(run)  # eval / generate / init_from read it
    with pytest.raises(ConfigError, match="train.global_batch_size = 4"):
        load_config(run / "config.toml")  # the exemption ends with the read
