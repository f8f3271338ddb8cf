"""model.family = "vit": the ViT's keys as a [model] section, one-line errors, refused by fastlm train."""
import pytest

from fastlm.models import VisionConfig
from fastlm.train.config import Config
from fastlm.train.errors import ConfigError


def _vit(**keys):
    return {"model": {"family": "vit", "image_size": 32, "patch_size": 4, "d_model": 64, "n_layer": 2, "n_head": 4,
                      "d_ff": 128, **keys}}


def test_vit_section_is_the_vision_config():
    config = Config.from_dict(_vit(positions="rope2d", pool="mean"))
    arch = config.model.architecture()
    assert isinstance(arch, VisionConfig) and arch.positions == "rope2d" and arch.pool == "mean"
    assert arch.num_patches == 64 and type(config.model).data_parallel_only
    again = Config.from_dict({"model": {k: v for k, v in config.to_dict()["model"].items() if v is not None}})
    assert again.model.architecture() == arch  # written and read back the same


@pytest.mark.parametrize("keys,message", [
    ({"image_size": 30}, "model.image_size = 30: expected a multiple of model.patch_size = 4"),
    ({"d_model": 60, "n_head": 8}, "model.d_model = 60: expected a multiple of model.n_head = 8"),
    ({"positions": "sinusoid"}, "model.positions = 'sinusoid': expected one of learned, rope2d"),
    ({"positions": "rope2d", "d_model": 24, "n_head": 4}, "model.n_head = 4: expected a head size"),
    ({"pool": "max"}, "model.pool = 'max': expected one of cls, mean"),
    ({"patch_size": 0}, "model.patch_size = 0: expected a positive integer"),
    ({"vocab_size": 100}, "unknown key model.vocab_size for model.family = \"vit\""),
])
def test_bad_values_are_one_line_config_errors(keys, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")) as e:
        Config.from_dict(_vit(**keys))
    assert "\n" not in str(e.value)


def test_fastlm_train_refuses_a_vision_model():
    from fastlm.train.run import build_model

    with pytest.raises(ConfigError, match="image_classification"):
        build_model(Config.from_dict(_vit()))
    with pytest.raises(ConfigError, match="parallel.tp = 2"):
        Config.from_dict({**_vit(), "parallel": {"tp": 2}})
    with pytest.raises(ConfigError, match="model.init_embeddings: model.family = \"vit\" reads pixels"):
        Config.from_dict(_vit(init_embeddings="vectors.txt"))
    with pytest.raises(ConfigError, match="model.lora: model.family = \"vit\""):
        Config.from_dict(_vit(lora={"rank": 4}))
