"""fastlm.train: the trainer, its config, checkpoints and run directories.

    from fastlm.train import Trainer, load_config
    summary = Trainer(load_config("tiny", ["train.steps=100"])).fit()
"""
from fastlm.train.config import Config, load_config, preset_names
from fastlm.train.errors import CheckpointError, ConfigError, FastlmError
from fastlm.train.trainer import Trainer

__all__ = ["Trainer", "Config", "load_config", "preset_names", "ConfigError", "CheckpointError", "FastlmError"]
