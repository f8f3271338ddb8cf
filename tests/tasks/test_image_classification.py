"""The image_classification task: a ViT ([model] family = "vit") learns the synthetic shapes' colour far above
the majority label, a finished run evaluates to the same figures, and bad data or configs are one-line errors."""
from __future__ import annotations

import json

import pytest

from fastlm.tasks import evaluate, get_task
from fastlm.tasks.config import task_config_from_dict
from fastlm.tasks.datasets import DatasetError
from fastlm.tasks.loop import finetune
from fastlm.train.errors import ConfigError
from tests.tasks.test_captioning import _dataset

TASK = get_task("image_classification")


def _raw(train, **model):
    return {"task": {"train": train, "label_field": "colour"},
            "model": {"family": "vit", "image_size": 16, "patch_size": 4, "d_model": 32, "n_layer": 1, "n_head": 2,
                      "d_ff": 64, **model},
            "train": {"steps": 60, "global_batch_size": 32, "micro_batch_size": 32, "lr": 3e-3, "warmup_steps": 5,
                      "min_lr": 3e-4, "weight_decay": 0.0, "log_every": 10, "eval_every": 0, "precision": "fp32"},
            "checkpoint": {"every": 0}}


@pytest.mark.parametrize("positions", ["learned", "rope2d"])
def test_a_vit_learns_the_colour(tmp_path, positions):
    train = _dataset(tmp_path, 200)
    tc = task_config_from_dict(_raw(train, positions=positions, pool="mean"), TASK.Section, name="img")
    m = finetune(TASK, tc, tmp_path / "run", show_progress=False)["metrics"]
    assert m["accuracy"] > max(0.8, m["baseline_accuracy"] + 0.4), m
    assert 0 <= m["f1_macro"] <= 1
    again = evaluate("image_classification", tmp_path / "run")["metrics"]
    assert again["accuracy"] == pytest.approx(m["accuracy"]) and again["loss"] == pytest.approx(m["loss"], rel=1e-4)


def test_bad_labels_and_families_are_named(tmp_path):
    train = _dataset(tmp_path, 20)
    rows = [json.loads(x) for x in open(train).read().splitlines()]
    rows[3]["colour"] = "mauve"
    val = tmp_path / "set" / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tc = task_config_from_dict(_raw(train), TASK.Section, name="img")
    with pytest.raises(DatasetError, match=r"val.jsonl:4: unknown label 'mauve'"):
        TASK.read_split(tc, val, {"labels": ["blue", "green", "purple", "red", "yellow"]})
    raw = _raw(train)
    raw["model"] = {"family": "llama", "n_layer": 1, "n_head": 2, "d_model": 32}
    with pytest.raises(ConfigError, match="image_classification trains a vision encoder"):
        finetune(TASK, task_config_from_dict(raw, TASK.Section, name="img"), tmp_path / "x", show_progress=False)
    with pytest.raises(ConfigError, match="model.image_size = 16: expected a multiple of model.patch_size = 5"):
        task_config_from_dict(_raw(train, patch_size=5), TASK.Section, name="img")
