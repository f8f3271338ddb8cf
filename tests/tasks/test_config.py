"""Task configs: the training sections plus [task]; a built backbone's architecture is recorded on a copy."""
from __future__ import annotations

import pytest
import tomllib

from fastlm.models import GPTConfig
from fastlm.tasks import get_task
from fastlm.tasks.backbone import build_backbone
from fastlm.tasks.config import load_task_config, task_config_from_dict
from fastlm.train.errors import ConfigError

SECTION = get_task("classification").Section
DEMO = ["task.train=demo:langid"]


def test_the_model_section_takes_its_familys_keys():
    assert not load_task_config("classification-demo", SECTION).config.model.is_encoder
    assert task_config_from_dict({"model": {"family": "bert"}}, SECTION, DEMO).config.model.is_encoder
    with pytest.raises(ConfigError, match=r'unknown key model.n_kv_head for model.family = "bert"'):
        task_config_from_dict({"model": {"family": "bert", "n_kv_head": 2}}, SECTION, DEMO)


def test_with_model_architecture_records_on_a_copy():
    tc = task_config_from_dict({"model": {"n_layer": 2, "n_head": 2, "d_model": 32}}, SECTION, DEMO)
    before = tc.to_toml()
    body, tokenizer = build_backbone(tc)
    assert body.config.n_layer == 2 and tokenizer is None and tc.to_toml() == before
    built = GPTConfig(family="llama", vocab_size=4096, n_layer=1, n_head=2, d_model=32).resolved()
    resolved = tc.with_model_architecture(built)
    assert tc.to_toml() == before  # the user's config is untouched
    assert resolved.config.model.architecture() == built and resolved.task == tc.task
    again = task_config_from_dict(tomllib.loads(resolved.to_toml()), SECTION)
    assert again.to_toml() == resolved.to_toml()
